"""Settings: env prefix, .env file, the key kept secret."""

from __future__ import annotations

from marketplace.config import Settings

KEY = "0x" + "ab" * 32


def test_env_and_dotenv(tmp_path, monkeypatch):
    env_file = tmp_path / ".env"
    env_file.write_text(f"MODELMARKET_CONFIRMATIONS=7\nMODELMARKET_PRIVATE_KEY={KEY}\n")
    monkeypatch.setenv("MODELMARKET_RPC_URL", "http://127.0.0.1:1")
    s = Settings(_env_file=env_file)  # type: ignore[call-arg]
    assert s.confirmations == 7
    assert s.rpc_url == "http://127.0.0.1:1"
    assert s.private_key is not None and s.private_key.get_secret_value() == KEY
    assert KEY[2:] not in repr(s) and KEY[2:] not in str(s.model_dump())
    assert s.deployment_path == s.data_dir / "deployment.json"


def test_fee_bounds(monkeypatch):
    import pydantic
    import pytest

    monkeypatch.setenv("MODELMARKET_FEE_BPS", "1001")
    with pytest.raises(pydantic.ValidationError, match="fee_bps"):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_readme_documents_every_setting():
    from marketplace.config import PROJECT_ROOT

    readme = (PROJECT_ROOT / "README.md").read_text()
    for name in Settings.model_fields:
        assert f"`MODELMARKET_{name.upper()}`" in readme, name


def test_settings_pick_the_store(tmp_path):
    from storage.backends import open_store
    from storage.ipfs import IpfsStore
    from storage.local import LocalStore

    local = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    assert isinstance(open_store(local.store_dir, local.ipfs_api), LocalStore)
    node = Settings(_env_file=None, data_dir=tmp_path, ipfs_api="/ip4/127.0.0.1/tcp/5001/http")  # type: ignore[call-arg]
    assert isinstance(open_store(node.store_dir, node.ipfs_api), IpfsStore)
