"""Gateway settings: embedded defaults < TOML config file < environment (``VOICE_GATEWAY_*``).

The config file is ``--config PATH``, else ``$VOICE_GATEWAY_CONFIG``, else ``config/gateway.toml``
when it exists in the working directory. The agent catalogue and number routes may sit in the
same file (``[[agents]]``, ``[[numbers]]``) or in a separate TOML file named by ``agents_file``.
Common knobs have flat environment names (``VOICE_GATEWAY_PUBLIC_URL``, ``..._PORT``,
``..._REDIS_URL``, ``..._ARCHIVE_URL``, ``..._TWILIO_ACCOUNT_SID``, ``..._TWILIO_AUTH_TOKEN``);
nested ones use ``__`` (``VOICE_GATEWAY_TURN__END_SILENCE_MS=700``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from voice_gateway.audio.endpointer import EndpointerConfig
from voice_gateway.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("config/gateway.toml")
E164_PATTERN = r"^\+[1-9][0-9]{1,14}$"


class AgentConfig(BaseModel):
    """One agent of the catalogue."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    name: str = ""
    type: Literal["echo", "websocket", "python"] = Field(
        "echo",
        description="echo (built in), websocket (remote service at `url`), python (`plugin`)",
    )
    org_id: str = "default"
    timezone: str = "UTC"
    prompt_id: str | None = None
    prompt_name: str | None = None
    prompt_version: str | None = None
    legacy: bool = False
    url: str | None = Field(
        None, description="websocket agents: ws:// or wss:// URL of the service"
    )
    plugin: str | None = Field(None, description="python agents: `package.module:ClassName`")
    options: dict[str, Any] = Field(default_factory=dict, description="passed to the agent")
    connect_timeout: float = Field(5.0, gt=0)
    read_timeout: float = Field(15.0, gt=0)
    fallback: str | None = Field(
        None, description="agent id to switch to if this one fails mid-call"
    )
    transfer_to: str | None = Field(None, description="default <Dial> target for transfers")
    dtmf_gather: bool = Field(False, description="gather keypad digits until # or the timeout")
    dtmf_timeout_seconds: float = Field(3.0, gt=0)
    turn: dict[str, Any] = Field(
        default_factory=dict, description="turn-detection overrides for this agent (see [turn])"
    )

    @model_validator(mode="after")
    def _reachable(self) -> AgentConfig:
        if self.type == "websocket" and not (self.url and self.url.startswith(("ws://", "wss://"))):
            raise ValueError("a websocket agent needs `url` starting with ws:// or wss://")
        if self.type == "python" and not (self.plugin and ":" in self.plugin):
            raise ValueError("a python agent needs `plugin` = 'package.module:ClassName'")
        if not self.name:
            self.name = self.id
        return self


class NumberRoute(BaseModel):
    """A called number and the agent that answers it."""

    model_config = ConfigDict(extra="forbid")

    number: str = Field(pattern=E164_PATTERN)
    agent: str
    org_id: str | None = Field(None, description="defaults to the agent's org")
    legacy: bool = False
    test: bool = False


class ApiKeyConfig(BaseModel):
    """An API key for the REST API, stored as its SHA-256 hex digest (never the key itself)."""

    model_config = ConfigDict(extra="forbid")

    org_id: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    name: str = ""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="VOICE_GATEWAY_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    # -- network ----------------------------------------------------------------------------
    public_url: str = Field(
        "http://127.0.0.1:8080",
        description="base URL Twilio uses to reach us (TwiML URLs and signature checks)",
    )
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)

    # -- state ------------------------------------------------------------------------------
    redis_url: SecretStr | None = Field(None, description="unset = embedded in-memory store")
    redis_prefix: str = "vg:"
    redis_max_connections: int = Field(
        256, ge=8, description="connection pool size; busy commands wait for a connection"
    )
    archive_url: SecretStr = Field(
        SecretStr("sqlite:///./var/archive.db"),
        description="sqlite:///path or postgresql://user@host/db",
    )
    archive_schema: str | None = Field(
        None, description="PostgreSQL only: keep the archive tables in this schema"
    )
    expiration_seconds: int = Field(86400, gt=0, le=30 * 86400)
    expiry_grace_seconds: int = Field(
        300, ge=10, description="live keys outlive the deadline by this"
    )
    completed_retention_seconds: int = Field(
        3600, ge=10, description="completed sessions stay live"
    )
    sweep_interval_seconds: float = Field(5.0, gt=0)

    # -- twilio -----------------------------------------------------------------------------
    twilio_account_sid: str | None = None
    twilio_auth_token: SecretStr | None = None
    twilio_api_base_url: str | None = Field(None, description="override api.twilio.com (tests)")
    validate_signatures: bool = Field(True, description="never turn off in production")
    stream_token_secret: SecretStr | None = Field(
        None, description="signs stream tokens; defaults to a key derived from the auth token"
    )
    stream_token_ttl_seconds: int = Field(300, gt=0)
    status_grace_seconds: float = Field(
        10.0, ge=0, description="after the stream ends, wait this long for the status callback"
    )
    test_numbers: list[str] = Field(default_factory=list)
    test_marker: str = Field("test", description="query parameter marking a test webhook URL")
    max_body_bytes: int = Field(64 * 1024, gt=0)
    max_frame_bytes: int = Field(64 * 1024, gt=0)
    max_concurrent_calls: int = Field(1000, gt=0)
    outbound_frame_ms: int = Field(
        200,
        ge=20,
        le=1000,
        multiple_of=20,
        description="agent audio per media message (Twilio buffers it and plays it in real "
        "time): 200 ms sends a tenth of the messages that 20 ms frames take",
    )
    inbound_read_interval_ms: int = Field(
        200,
        ge=0,
        le=200,
        description="longest a caller's frame may wait in the socket so that one read takes "
        "several: only while that frame cannot change anything at once (before the earliest "
        "frame that could end a turn or barge in), so turn ends and barge-ins are handled as "
        "their frame arrives; 0 reads every frame on arrival (telephony/pacing.py)",
    )
    call_lease_seconds: float = Field(
        30.0,
        ge=1,
        description="a live call's lease: if its instance dies, a sweeper ends it this long after",
    )
    drain_timeout_seconds: float = Field(
        30.0, ge=0, description="on SIGTERM, live calls may run this long before they are ended"
    )

    # -- agents and routing -----------------------------------------------------------------
    agents_file: Path | None = None
    agents: list[AgentConfig] = Field(
        default_factory=lambda: [AgentConfig(id="echo", name="Echo", type="echo")]
    )
    numbers: list[NumberRoute] = Field(default_factory=list)
    fallback_agent: str | None = Field(
        "echo", description="agent for numbers with no route; unset = polite hang-up"
    )
    default_org: str = "default"
    turn: EndpointerConfig = Field(
        default_factory=lambda: EndpointerConfig(barge_in_ms=80),
        description="turn detection: VAD, start threshold, end-of-turn silence, barge-in",
    )
    max_history_messages: int = Field(50, gt=0, description="history handed to an agent at open")

    # -- API --------------------------------------------------------------------------------
    api_keys: list[ApiKeyConfig] = Field(default_factory=list)
    api_keys_file: Path | None = Field(
        Path("var/api_keys.toml"),
        description="keys made by `voice-gateway keys create`, read at startup (missing = none)",
    )
    api_max_body_bytes: int = Field(
        1024 * 1024, gt=0, description="largest request body of the REST API (/v1); 413 above"
    )
    api_rate_limit_per_second: float = Field(50.0, gt=0, description="per client IP, /v1 only")
    api_rate_limit_burst: int = Field(100, gt=0)
    api_client_ip_header: str | None = Field(
        None, description="behind a proxy: header with the caller's address (X-Forwarded-For)"
    )

    # -- logging ----------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("public_url must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("test_numbers")
    @classmethod
    def _e164(cls, value: list[str]) -> list[str]:
        import re

        bad = [n for n in value if not re.match(E164_PATTERN, n)]
        if bad:
            raise ValueError(f"not E.164 numbers: {bad}")
        return value

    @model_validator(mode="after")
    def _catalogue(self) -> Settings:
        if self.agents_file is not None:
            extra = _load_agents_file(self.agents_file)
            self.agents = [*self.agents, *extra.get("agents", [])]
            self.numbers = [*self.numbers, *extra.get("numbers", [])]
        ids = [a.id for a in self.agents]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate agent ids: {dupes}")
        known = set(ids)
        for route in self.numbers:
            if route.agent not in known:
                raise ValueError(f"number {route.number} routes to unknown agent {route.agent!r}")
        for agent in self.agents:
            try:
                self.turn_config(agent)
            except ValidationError as exc:
                raise ValueError(f"agent {agent.id!r} has invalid turn settings: {exc}") from exc
            if agent.fallback is not None and agent.fallback not in known:
                raise ValueError(
                    f"agent {agent.id!r} falls back to unknown agent {agent.fallback!r}"
                )
        if self.fallback_agent is not None and self.fallback_agent not in known:
            raise ValueError(
                f"fallback_agent {self.fallback_agent!r} is not in the agent catalogue"
            )
        numbers = [r.number for r in self.numbers]
        if len(numbers) != len(set(numbers)):
            raise ValueError("a number is routed twice")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = _config_path()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    # -- derived ----------------------------------------------------------------------------

    def agent(self, agent_id: str) -> AgentConfig | None:
        return next((a for a in self.agents if a.id == agent_id), None)

    def turn_config(self, agent: AgentConfig) -> EndpointerConfig:
        """The gateway's turn settings with the agent's overrides applied."""
        if not agent.turn:
            return self.turn
        return EndpointerConfig.model_validate({**self.turn.model_dump(), **agent.turn})

    def route(self, number: str) -> NumberRoute | None:
        return next((r for r in self.numbers if r.number == number), None)

    def stream_secret(self) -> bytes:
        """Key for stream tokens: the configured secret, else derived from the auth token."""
        if self.stream_token_secret is not None:
            return self.stream_token_secret.get_secret_value().encode()
        token = self.twilio_auth_token.get_secret_value() if self.twilio_auth_token else ""
        return hmac.new(token.encode(), b"voice-gateway stream token v1", hashlib.sha256).digest()


# The config path for the next ``Settings()`` call; set by ``load_settings``.
_CONFIG_PATH: Path | None = None


def _config_path() -> Path | None:
    if _CONFIG_PATH is not None:
        return _CONFIG_PATH
    env = os.environ.get("VOICE_GATEWAY_CONFIG")
    if env:
        return Path(env)
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.is_file() else None


def _load_agents_file(path: Path) -> dict[str, list[Any]]:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"cannot read agents_file {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"agents_file {path} is not valid TOML: {exc}") from exc
    unknown = set(data) - {"agents", "numbers"}
    if unknown:
        raise ValueError(f"agents_file {path} has unknown tables {sorted(unknown)}")
    return {
        "agents": [AgentConfig.model_validate(a) for a in data.get("agents", [])],
        "numbers": [NumberRoute.model_validate(n) for n in data.get("numbers", [])],
    }


def load_settings(config: Path | str | None = None, **overrides: Any) -> Settings:
    """Load settings, turning every problem into a ``ConfigError`` naming the file and key."""
    global _CONFIG_PATH
    path = Path(config) if config is not None else None
    if path is not None and not path.is_file():
        raise ConfigError(f"config file {path} does not exist", source=str(path))
    _CONFIG_PATH = path
    try:
        shown = path or _config_path()
        if shown is not None:
            try:
                tomllib.loads(shown.read_text())
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{shown}: not valid TOML: {exc}", source=str(shown)) from exc
        try:
            return Settings(**overrides)
        except ValidationError as exc:
            raise ConfigError(
                format_validation_error(exc, str(shown) if shown else "environment"),
                source=str(shown) if shown else None,
            ) from exc
    finally:
        _CONFIG_PATH = None


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(settings)"
        lines.append(f"{source}: {key}: {err['msg']}")
    return "\n".join(lines)
