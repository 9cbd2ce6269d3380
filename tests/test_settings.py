"""Settings precedence and the on-disk key store."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from deploy import keystore
from deploy.bootstrap import init_deployment
from deploy.settings import SottoSettings
from privacy.errors import ConfigError
from privacy.keys import KeyStatus


def test_env_and_file_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "sotto.toml"
    cfg.write_text(
        'log_level = "DEBUG"\n[ingest]\nbatch_max_records = 77\nmax_envelope_bytes = 4096\n'
    )
    monkeypatch.setenv("SOTTO_CONFIG", str(cfg))
    monkeypatch.setenv("SOTTO_INGEST__MAX_ENVELOPE_BYTES", "8192")
    s = SottoSettings()
    assert s.log_level == "DEBUG"
    assert s.ingest.batch_max_records == 77  # from the file
    assert s.ingest.max_envelope_bytes == 8192  # env beats file


def test_missing_config_file_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SOTTO_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match="does not exist"):
        SottoSettings()


def test_init_and_bootstrap_override(tmp_path: Path) -> None:
    init_deployment(tmp_path / "h", ("eu", "cn"), "127.0.0.1:1234")
    s = SottoSettings(home=tmp_path / "h", kafka_bootstrap="10.0.0.1:9092,10.0.0.2:9092")
    assert s.policy.region("cn").bootstrap_servers == ["10.0.0.1:9092", "10.0.0.2:9092"]
    assert SottoSettings(home=tmp_path / "nohome").policy_path.name == "regions.toml"
    with pytest.raises(ConfigError, match="sotto init"):
        _ = SottoSettings(home=tmp_path / "nohome").policy


def test_keystore_rotation_and_retirement(tmp_path: Path) -> None:
    d = tmp_path / "keys"
    ks1 = keystore.rotate(d, "eu")
    first = ks1.current().key_id
    priv = d / "private" / f"{first}.key"
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    ks2 = keystore.rotate(d, "eu")
    assert ks2.get(first).status is KeyStatus.DECRYPT_ONLY
    assert set(keystore.load_private_keys(d)) == {k.key_id for k in ks2.keys}
    ks3 = keystore.retire(d, first)
    assert ks3.get(first).status is KeyStatus.RETIRED
    assert not priv.exists()
    assert first not in keystore.load_private_keys(d)
