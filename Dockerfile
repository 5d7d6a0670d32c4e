# ModelMarket gateway and indexer image. Builds where a Docker engine exists; `make test`
# lints it with hadolint (there is no engine on the development machines).
#
# No Node.js in either stage: npm only brings anvil (the embedded `make run` chain),
# solc-js and js-ipfs, all dev tools. The image runs `serve`, `indexer`, `migrate` and
# `deploy` against a real chain (contracts/artifacts/ is committed, nothing compiles), so
# `modelmarket run` here needs MODELMARKET_RPC_URL and a key like any real deployment.

FROM python:3.11-slim-bookworm AS build

ENV PYTHONDONTWRITEBYTECODE=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_LINK_MODE=copy

RUN pip install --no-cache-dir uv==0.13.9

# The runtime stage copies /app as is: the project is installed editable and
# marketplace.config finds alembic.ini, migrations/ and contracts/ next to its package,
# so the path must be the same in both stages.
WORKDIR /app

# Dependencies first, so code changes do not reinstall them.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --locked --no-dev --no-install-project --compile-bytecode

COPY app.py alembic.ini gunicorn.conf.py ./
COPY migrations/ migrations/
COPY marketplace/ marketplace/
COPY storage/ storage/
COPY inference/ inference/
COPY contracts/artifacts/ contracts/artifacts/
# PYTHONDONTWRITEBYTECODE is set at run time too, so the app's own modules are compiled
# here; checked-hash pycs stay valid whatever mtimes the copy into the runtime stage keeps.
RUN uv sync --locked --no-dev --compile-bytecode \
    && .venv/bin/python -m compileall -q --invalidation-mode checked-hash \
        app.py gunicorn.conf.py migrations marketplace storage inference


FROM python:3.11-slim-bookworm AS runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/app/.venv/bin:$PATH \
    MODELMARKET_DATA_DIR=/data \
    MODELMARKET_HTTP_HOST=0.0.0.0 \
    MODELMARKET_HTTP_PORT=8000

# Code stays root-owned: the service user can write its data dir and nothing else.
RUN useradd --no-log-init --create-home --uid 10001 modelmarket \
    && mkdir -p /data /shared \
    && chown modelmarket /data /shared

WORKDIR /app
COPY --from=build /app /app

USER 10001
VOLUME ["/data"]
EXPOSE 8000

# slim has no curl; urlopen raises on any non-2xx answer, which fails the check.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/v2/health/ready' % os.environ.get('MODELMARKET_HTTP_PORT', '8000'), timeout=4)"]

# `serve` execs the server (granian), so `docker stop`'s SIGTERM reaches it and workers drain.
CMD ["modelmarket", "serve"]
