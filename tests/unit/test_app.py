"""The app factory and the one place domain errors become HTTP."""

from __future__ import annotations

import os
import subprocess
import sys

from app import create_app
from marketplace.chain.artifacts import Deployment
from marketplace.config import PROJECT_ROOT
from marketplace.devstack.ports import free_port


def test_deployment_endpoint(settings):
    record = Deployment(
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


def test_gunicorn_app_colon_app_builds_the_app_on_access(tmp_path):
    """`gunicorn app:app` works, and importing the module builds nothing: in a fresh
    interpreter, the import leaves the data dir untouched; the first access builds the
    app (its signing secret appears) with the paid endpoint registered."""
    data = tmp_path / "data"
    probe = (
        "import os, app\n"
        f"data = {str(data)!r}\n"
        "print(os.path.exists(data) and sorted(os.listdir(data)))\n"
        "built = app.app\n"
        "print('oip.infer' in built.view_functions, sorted(os.listdir(data)))\n"
    )
    env = {**os.environ, "MODELMARKET_DATA_DIR": str(data)}
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.splitlines()
    assert out[0] == "False", "importing app made the data dir"
    assert out[1].startswith("True") and "secret" in out[1]


def test_ready_says_503_when_the_database_is_down(settings):
    # a real fault: the configured PostgreSQL port has nothing listening

    record = Deployment(
        31337, "0x" + "1" * 40, "0x" + "2" * 40, 1, "0x" + "3" * 40, "0x" + "3" * 40
    )
    record.save(settings.deployment_path)
    down = settings.model_copy(
        update={"database_url": f"postgresql+psycopg://x@127.0.0.1:{free_port()}/x"}
    )
    resp = create_app(down).test_client().get("/v2/health/ready")
    assert resp.status_code == 503
    assert resp.get_json()["code"] == "database_unavailable"


def test_a_missing_deployment_does_not_name_server_paths(settings):
    body = create_app(settings).test_client().get("/api/v1/deployment").get_json()
    assert str(settings.data_dir) not in body["message"]
