"""Settings: defaults < TOML file < environment; every problem names its file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from voice_gateway.cli import main
from voice_gateway.errors import ConfigError
from voice_gateway.settings import load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(__import__("os").environ):
        if name.startswith("VOICE_GATEWAY_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no config/gateway.toml here


def test_embedded_defaults_need_no_setup() -> None:
    s = load_settings()
    assert s.public_url == "http://127.0.0.1:8080"
    assert s.port == 8080 and s.redis_url is None
    assert s.archive_url.get_secret_value() == "sqlite:///./var/archive.db"
    assert s.expiration_seconds == 86400
    assert [a.id for a in s.agents] == ["echo"] and s.fallback_agent == "echo"
    assert s.turn.end_silence_ms == 600


def test_file_overrides_defaults_and_environment_overrides_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "gw.toml"
    cfg.write_text(
        'public_url = "https://gw.example.com/"\nport = 9000\nexpiration_seconds = 600\n'
        "[turn]\nend_silence_ms = 700\n"
    )
    s = load_settings(cfg)
    assert (s.public_url, s.port, s.expiration_seconds) == ("https://gw.example.com", 9000, 600)
    assert s.turn.end_silence_ms == 700
    monkeypatch.setenv("VOICE_GATEWAY_PORT", "9100")
    monkeypatch.setenv("VOICE_GATEWAY_PUBLIC_URL", "https://other.example.com")
    monkeypatch.setenv("VOICE_GATEWAY_REDIS_URL", "redis://:pw@127.0.0.1:6379/0")
    monkeypatch.setenv("VOICE_GATEWAY_TWILIO_AUTH_TOKEN", "tok-secret")
    monkeypatch.setenv("VOICE_GATEWAY_TURN__END_SILENCE_MS", "800")
    s = load_settings(cfg)
    assert (s.port, s.public_url) == (9100, "https://other.example.com")
    assert s.turn.end_silence_ms == 800
    assert s.redis_url is not None and s.redis_url.get_secret_value().endswith("6379/0")
    assert "tok-secret" not in repr(s) and "pw@" not in repr(s)
    # explicit overrides (serve --port) beat everything
    assert load_settings(cfg, port=9200).port == 9200


def test_default_config_file_in_the_working_directory_is_used(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "gateway.toml").write_text("port = 8181\n")
    assert load_settings().port == 8181


def test_agents_file_and_routing_are_validated(tmp_path: Path) -> None:
    agents = tmp_path / "agents.toml"
    agents.write_text(
        '[[agents]]\nid = "a"\ntype = "websocket"\nurl = "wss://x/y"\n'
        '[[numbers]]\nnumber = "+15005550001"\nagent = "a"\n'
    )
    cfg = tmp_path / "gw.toml"
    cfg.write_text(f'agents_file = "{agents}"\n')
    s = load_settings(cfg)
    assert s.route("+15005550001") is not None and s.agent("a") is not None
    agents.write_text('[[numbers]]\nnumber = "+15005550001"\nagent = "missing"\n')
    with pytest.raises(ConfigError, match="unknown agent 'missing'"):
        load_settings(cfg)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("port = 70000\n", "port"),
        ('public_url = "ftp://x"\n', "public_url"),
        ('[[numbers]]\nnumber = "5550001"\nagent = "echo"\n', "numbers.0.number"),
        ('[[agents]]\nid = "ws"\ntype = "websocket"\n', "agents.0"),
        ("no_such_key = 1\n", "no_such_key"),
        ('[turn]\nend_silence_ms = "soon"\n', "turn.end_silence_ms"),
    ],
)
def test_config_check_names_the_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, expected: str
) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(body)
    assert main(["config", "check", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"{cfg}: {expected}" in err


def test_config_check_reports_broken_toml_and_missing_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "broken.toml"
    cfg.write_text("port = \n")
    assert main(["config", "check", "--config", str(cfg)]) == 2
    assert "not valid TOML" in capsys.readouterr().err
    assert main(["config", "check", "--config", str(tmp_path / "nope.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_config_check_accepts_the_shipped_examples(capsys: pytest.CaptureFixture[str]) -> None:
    root = Path(__file__).parents[3]
    assert main(["config", "check", "--config", str(root / "config" / "gateway.toml")]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "in-memory" in out
