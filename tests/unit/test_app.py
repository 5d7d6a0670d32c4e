"""The app factory and the one place domain errors become HTTP."""

from __future__ import annotations

from app import create_app
from marketplace import chain


def test_deployment_endpoint(settings):
    record = chain.Deployment(
        31337, "0x" + "1" * 40, "0x" + "2" * 40, 1, "0x" + "3" * 40, "0x" + "3" * 40
    )
    record.save(settings.deployment_path)
    client = create_app(settings).test_client()
    body = client.get("/api/v1/deployment").get_json()
    assert body == {
        "chain_id": 31337,
        "marketplace": record.marketplace,
        "token": record.token,
        "start_block": 1,
    }


def test_missing_deployment_is_a_json_error(settings):
    resp = create_app(settings).test_client().get("/api/v1/deployment")
    assert resp.status_code == 500
    body = resp.get_json()
    assert body["error"] == "configuration_error"
    assert "deploy first" in body["message"]


def test_gunicorn_app_colon_app_builds_the_app_on_access(settings, monkeypatch):
    """`gunicorn app:app` works, and importing the module builds nothing."""
    import app as module

    monkeypatch.setenv("MODELMARKET_DATA_DIR", str(settings.data_dir))
    assert "app" not in vars(module)  # nothing built at import
    built = module.app
    assert built.name == "app" and "oip.infer" in built.view_functions


def test_ready_says_503_when_the_database_is_down(settings):
    # a real fault: the configured PostgreSQL port has nothing listening
    from marketplace import devstack

    record = chain.Deployment(
        31337, "0x" + "1" * 40, "0x" + "2" * 40, 1, "0x" + "3" * 40, "0x" + "3" * 40
    )
    record.save(settings.deployment_path)
    down = settings.model_copy(
        update={"database_url": f"postgresql+psycopg://x@127.0.0.1:{devstack.free_port()}/x"}
    )
    resp = create_app(down).test_client().get("/v2/health/ready")
    assert resp.status_code == 503
    assert resp.get_json()["code"] == "database_unavailable"


def test_a_missing_deployment_does_not_name_server_paths(settings):
    body = create_app(settings).test_client().get("/api/v1/deployment").get_json()
    assert str(settings.data_dir) not in body["message"]
