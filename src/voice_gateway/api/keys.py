"""API keys: minting, the keys file, and the ``voice-gateway keys`` command.

A key is ``vgk_`` followed by 32 random bytes (URL-safe base64). The gateway never stores a
key, only its SHA-256 hex digest, bound to one organisation: in the settings (``api_keys``) or
in the keys file (``api_keys_file``, default ``var/api_keys.toml``), which
``voice-gateway keys create`` appends to::

    [[keys]]
    org_id = "acme"
    name = "billing backend"
    sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

The file is read when the gateway starts: restart it (or roll the instances) after adding a key.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from voice_gateway.errors import ConfigError
from voice_gateway.settings import ApiKeyConfig, format_validation_error

KEY_PREFIX = "vgk_"
_HEADER = (
    "# API keys of voice-gateway, written by `voice-gateway keys create`.\n"
    "# Only SHA-256 digests are stored here; the keys themselves were shown once.\n"
)


def hash_key(key: str) -> str:
    """The SHA-256 hex digest a key is stored as."""
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def load_key_file(path: Path) -> list[ApiKeyConfig]:
    """The keys of a keys file; a missing file has none. Problems are a ``ConfigError``."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ConfigError(f"cannot read the API keys file {path}: {exc}", source=str(path)) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}", source=str(path)) from exc
    unknown = set(data) - {"keys"}
    if unknown:
        raise ConfigError(f"{path}: unknown tables {sorted(unknown)}", source=str(path))
    try:
        return [ApiKeyConfig.model_validate(entry) for entry in data.get("keys", [])]
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path)), source=str(path)) from exc


def _toml_string(value: str) -> str:
    """A TOML basic string (every control character escaped)."""
    out = ['"']
    for ch in value:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def append_key(path: Path, entry: ApiKeyConfig) -> None:
    """Add ``entry`` to the keys file (created, readable by its owner only, if missing)."""
    load_key_file(path)  # refuse to append to a file that does not load
    path.parent.mkdir(parents=True, exist_ok=True)
    block = (
        "\n[[keys]]\n"
        f"org_id = {_toml_string(entry.org_id)}\n"
        f"name = {_toml_string(entry.name)}\n"
        f"sha256 = {_toml_string(entry.sha256)}\n"
    )
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        if f.tell() == 0:
            f.write(_HEADER)
        f.write(block)


def configured_keys(api_keys: list[ApiKeyConfig], key_file: Path | None) -> list[ApiKeyConfig]:
    """The keys from the settings, then those of the keys file."""
    return [*api_keys, *(load_key_file(key_file) if key_file is not None else [])]


# -- the `keys` command ------------------------------------------------------------------------


def _settings(args: argparse.Namespace) -> Any:
    from voice_gateway.settings import load_settings

    return load_settings(args.config)


def _key_file(args: argparse.Namespace) -> Path:
    if args.file is not None:
        return Path(args.file)
    path: Path | None = _settings(args).api_keys_file
    if path is None:
        raise ConfigError("api_keys_file is not set: pass --file or set it in the config")
    return path


def cmd_create(args: argparse.Namespace) -> int:
    org = args.org.strip()
    if not org:
        raise ConfigError("--org must not be empty")
    path = _key_file(args)
    key = generate_key()
    append_key(path, ApiKeyConfig(org_id=org, sha256=hash_key(key), name=args.name))
    print(key)
    print(
        f"API key for org {org!r} added to {path}. It is shown only this once; "
        "restart the gateway to use it.",
        file=sys.stderr,
    )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    settings = _settings(args)
    path = Path(args.file) if args.file is not None else settings.api_keys_file
    rows = [("settings", k) for k in settings.api_keys]
    rows += [(str(path), k) for k in (load_key_file(path) if path is not None else [])]
    if not rows:
        print("no API keys", file=sys.stderr)
        return 0
    print(f"{'ORG':<20} {'NAME':<24} {'SHA256':<14} SOURCE")
    for source, key in rows:
        print(f"{key.org_id:<20} {key.name or '-':<24} {key.sha256[:12] + '..':<14} {source}")
    return 0


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    config_arg: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Add ``keys create`` and ``keys list`` to the ``voice-gateway`` command."""
    keys = subparsers.add_parser("keys", help="REST API keys: create, list")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)

    create = keys_sub.add_parser(
        "create", help="mint a key for an org, print it once, store its SHA-256 digest"
    )
    config_arg(create)
    create.add_argument("--org", required=True, help="the organisation the key acts for")
    create.add_argument("--name", default="", help="a label to recognise the key by")
    create.add_argument("--file", type=Path, help="keys file (default: api_keys_file setting)")
    create.set_defaults(func=cmd_create)

    listing = keys_sub.add_parser("list", help="show org, name and digest prefix of every key")
    config_arg(listing)
    listing.add_argument("--file", type=Path, help="keys file (default: api_keys_file setting)")
    listing.set_defaults(func=cmd_list)
