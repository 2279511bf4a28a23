"""API keys: `voice-gateway keys create/list`, the keys file, and the key ring."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from voice_gateway.api.auth import KeyRing
from voice_gateway.api.keys import (
    KEY_PREFIX,
    append_key,
    configured_keys,
    hash_key,
    load_key_file,
)
from voice_gateway.cli import main
from voice_gateway.errors import ConfigError
from voice_gateway.settings import ApiKeyConfig


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(
        f'api_keys_file = "{tmp_path / "var" / "api_keys.toml"}"\n'
        "[[api_keys]]\n"
        'org_id = "ops"\n'
        f'sha256 = "{hash_key("settings-key")}"\n'
        'name = "from settings"\n'
    )
    return path


def test_create_prints_a_new_key_once_and_stores_only_its_digest(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "create", "--config", str(config), "--org", "acme", "--name", "ci"]) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith(KEY_PREFIX) and len(key) > 40

    key_file = tmp_path / "var" / "api_keys.toml"
    text = key_file.read_text()
    assert key not in text and key[len(KEY_PREFIX) :] not in text
    assert hash_key(key) in text
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert load_key_file(key_file) == [ApiKeyConfig(org_id="acme", sha256=hash_key(key), name="ci")]

    assert main(["keys", "create", "--config", str(config), "--org", "globex"]) == 0
    second = capsys.readouterr().out.strip()
    assert second != key
    ring = KeyRing(configured_keys([], key_file))
    assert ring.org_for(key) == "acme" and ring.org_for(second) == "globex"
    assert ring.org_for(key + "x") is None and ring.org_for("") is None


def test_list_shows_org_name_and_digest_prefix_never_a_key(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["keys", "create", "--config", str(config), "--org", "acme", "--name", "billing"])
    key = capsys.readouterr().out.strip()
    assert main(["keys", "list", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert key not in out and hash_key(key) not in out
    assert hash_key(key)[:12] in out
    lines = out.splitlines()
    assert any("acme" in line and "billing" in line for line in lines)
    assert any("ops" in line and "from settings" in line for line in lines)


def test_names_with_quotes_newlines_and_unicode_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    entry = ApiKeyConfig(org_id='a"b\\c', sha256=hash_key("k"), name="line\nbreak\x7f ü €")
    append_key(path, entry)
    assert load_key_file(path) == [entry]


def test_a_missing_file_has_no_keys_and_a_broken_one_is_a_config_error(tmp_path: Path) -> None:
    assert load_key_file(tmp_path / "nope.toml") == []
    broken = tmp_path / "broken.toml"
    broken.write_text("[[keys]]\norg_id = 'acme'\nsha256 = 'not-hex'\n")
    with pytest.raises(ConfigError, match="sha256"):
        load_key_file(broken)
    with pytest.raises(ConfigError):  # never appends to a file it cannot read back
        append_key(broken, ApiKeyConfig(org_id="x", sha256=hash_key("k")))
    assert main(["keys", "create", "--file", str(broken), "--org", "acme"]) == 2
