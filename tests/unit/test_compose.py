"""docker-compose.yml starts the stack it promises, with commands and settings the app
really has (there is no Docker engine here to start it)."""

from __future__ import annotations

import os
import re
import shlex
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml
from sqlalchemy.engine import make_url

from marketplace import serving
from marketplace.cli import main
from marketplace.config import PROJECT_ROOT, Settings
from marketplace.devstack.anvil import dev_key

COMPOSE: dict[str, Any] = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
APP_IMAGE = "modelmarket:local"
# what the image's ENV sets; the compose file's environment comes on top
IMAGE_ENV = dict(re.findall(r"(MODELMARKET_\w+)=(\S+)", (PROJECT_ROOT / "Dockerfile").read_text()))


def _argv(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(w) for w in command]


# Services that run the CLI, by the command they run.
APP = {name: s for name, s in SERVICES.items() if _argv(s)[:1] == ["modelmarket"]}


def _running(command: str) -> list[str]:
    return sorted(name for name, s in APP.items() if _argv(s)[1:2] == [command])


def _context(service: dict[str, Any]) -> click.Context:
    """The click context the service's command line parses to (UsageError if it does not)."""
    name, *args = _argv(service)[1:]
    with click.Context(main) as parent:
        command = main.get_command(parent, name)
        assert command is not None, f"`modelmarket {name}` is not a command"
        return command.make_context(name, args, parent=parent)


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):  # the KEY=value list form
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _settings(service: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """What the service's process reads: its environment over the image's, nothing else."""
    for key in [k for k in os.environ if k.startswith("MODELMARKET_")]:
        monkeypatch.delenv(key)
    for key, value in {**IMAGE_ENV, **_env(service)}.items():
        monkeypatch.setenv(key, value)
    return Settings(_env_file=None)  # type: ignore[call-arg]


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", str(duration))
    assert parts, f"cannot read the duration {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def test_the_stack_has_two_gateways_two_indexers_postgres_kubo_and_a_chain():
    assert len(_running("serve")) >= 2
    assert len(_running("indexer")) >= 2
    images = {s.get("image", "").split(":")[0] for s in SERVICES.values()}
    assert "postgres" in images
    assert "ipfs/kubo" in images
    assert any("anvil" in [*s.get("entrypoint", []), *_argv(s)][:1] for s in SERVICES.values()), (
        "no service runs anvil"
    )


@pytest.mark.parametrize("name", sorted(APP))
def test_each_app_command_parses_as_a_real_cli_command(name):
    # A renamed command or option fails here, not at `docker compose up`.
    ctx = _context(APP[name])
    assert ctx.command.name == _argv(APP[name])[1]


def test_app_services_run_what_make_run_runs_in_one_process():
    # `modelmarket run` = migrate + an indexer + the gateway under gunicorn (+ a deploy).
    assert {"serve", "indexer", "migrate", "deploy"} <= {_argv(s)[1] for s in APP.values()}


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_image_is_pinned(name):
    image = SERVICES[name].get("image", "")
    repo, _, tag = image.rpartition(":")
    assert repo and "/" not in tag, f"{name}: {image!r} names no tag"
    assert tag != "latest"
    if "build" not in SERVICES[name]:  # pulled, so the tag must name a release
        assert re.search(r"\d", tag), f"{name}: {image!r} is not a versioned tag"
    else:
        assert image == APP_IMAGE, "every built service shares one image"


@pytest.mark.parametrize("name", sorted(APP))
def test_every_modelmarket_variable_is_a_real_setting(name, monkeypatch):
    # Settings ignores unknown variables, so a misspelt one would be silently dropped.
    fields = set(Settings.model_fields)
    for key in _env(APP[name]):
        if key.startswith("MODELMARKET_"):
            assert key.removeprefix("MODELMARKET_").lower() in fields, key
    _settings(APP[name], monkeypatch)  # and every value validates


@pytest.mark.parametrize("name", sorted(APP))
def test_app_services_reach_the_database_chain_and_ipfs_by_service_name(name, monkeypatch):
    settings = _settings(APP[name], monkeypatch)
    if _argv(APP[name])[1] != "deploy":  # deploy only talks to the chain
        url = make_url(settings.db_url)
        assert url.drivername == "postgresql+psycopg"
        url.get_dialect().import_dbapi()  # the driver the URL names is installed
        assert url.host in SERVICES
        ipfs = settings.ipfs_api
        assert ipfs is not None
        assert ipfs.split("/")[2] in SERVICES
        assert ipfs.split("/")[1] in ("dns", "dns4", "dns6") and ipfs.endswith("/http")
    assert settings.rpc_url is not None
    assert urlsplit(settings.rpc_url).hostname in SERVICES


def test_only_the_migrate_one_shot_migrates_before_the_rest_start():
    # Alembic takes no lock: concurrent upgrades of an empty database collide.
    (migrate,) = _running("migrate")
    for name in _running("serve"):
        assert _context(APP[name]).params["migrate"] is False, f"{name} migrates on start"
    for name in _running("serve") + _running("indexer"):
        deps = APP[name]["depends_on"]
        assert deps[migrate]["condition"] == "service_completed_successfully", name


def test_deploy_shares_its_record_and_signs_with_anvils_dev_account_0(monkeypatch):
    (deploy,) = _running("deploy")
    record = _settings(APP[deploy], monkeypatch).deployment_path
    assert _env(APP[deploy])["MODELMARKET_PRIVATE_KEY"] == dev_key(0)
    written = set(APP[deploy]["volumes"])
    for name in _running("serve") + _running("indexer"):
        assert _settings(APP[name], monkeypatch).deployment_path == record, name
        assert written & set(APP[name]["volumes"]), f"{name} cannot see {record}"
        deps = APP[name]["depends_on"]
        assert deps[deploy]["condition"] == "service_completed_successfully", name
    volume = {v.split(":")[0]: v.split(":")[1] for v in written}
    assert any(record.is_relative_to(path) for path in volume.values())
    assert set(volume) <= set(COMPOSE.get("volumes") or {}), "a named volume, shared"


def test_waits_for_health_only_on_services_that_report_it():
    image_checks = "HEALTHCHECK" in (PROJECT_ROOT / "Dockerfile").read_text()
    for name, service in SERVICES.items():
        for dep, cond in service.get("depends_on", {}).items():
            target = SERVICES[dep]
            if cond["condition"] == "service_healthy":
                check = target.get("healthcheck")
                own = check is not None and not check.get("disable")
                assert own or (image_checks and dep in _running("serve")), f"{name} -> {dep}"
            elif cond["condition"] == "service_completed_successfully":
                assert dep in _running("migrate") + _running("deploy"), f"{name} -> {dep}"


def test_gateways_keep_the_images_readiness_check_and_the_others_turn_it_off():
    # A service that serves no HTTP would otherwise show as unhealthy forever.
    for name, service in APP.items():
        check = service.get("healthcheck") or {}
        if name in _running("serve"):
            assert not check.get("disable") and "test" not in check, name
        else:
            assert check.get("disable") is True, name


def test_each_gateway_is_published_at_its_own_public_url(monkeypatch):
    # Sign-In with Ethereum messages must name the host and port people reach it at.
    seen = set()
    for name in _running("serve"):
        settings = _settings(APP[name], monkeypatch)
        (published,) = APP[name]["ports"]
        host, host_port, container_port = str(published).split(":")
        assert int(container_port) == settings.http_port
        assert urlsplit(settings.public).netloc == f"{host}:{host_port}", name
        seen.add(host_port)
    assert len(seen) == len(_running("serve"))


def test_gateways_get_time_to_drain_before_they_are_killed():
    # gunicorn.conf.py and granian_server.py both take it from here (running either
    # would set this process's metrics environment)
    graceful = serving.GRACEFUL
    assert "graceful_timeout = serving.GRACEFUL" in (PROJECT_ROOT / "gunicorn.conf.py").read_text()
    shipped = (PROJECT_ROOT / "marketplace" / "granian_server.py").read_text()
    assert "workers_kill_timeout=serving.GRACEFUL" in shipped
    for name in _running("serve"):
        assert _seconds(APP[name]["stop_grace_period"]) > graceful, name
