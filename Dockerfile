# ModelMarket gateway image. Builds where a Docker engine exists; `make test` lints it
# with hadolint (there is no engine on the development machines).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_LINK_MODE=copy \
    MODELMARKET_DATA_DIR=/data \
    MODELMARKET_HTTP_HOST=0.0.0.0

# Node runs the npm toolchain (anvil for the embedded chain). Debian's own versions
# are what this image is tested with, so they are not pinned one by one.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends nodejs npm \
    && rm -rf /var/lib/apt/lists/*

RUN pip install --no-cache-dir uv==0.13.9

WORKDIR /app

COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error

# Dependencies first, so code changes do not reinstall them.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --locked --no-dev --no-install-project --compile-bytecode

COPY app.py alembic.ini gunicorn.conf.py ./
COPY migrations/ migrations/
COPY marketplace/ marketplace/
COPY storage/ storage/
COPY inference/ inference/
COPY contracts/artifacts/ contracts/artifacts/
RUN uv sync --locked --no-dev --compile-bytecode

RUN useradd --create-home --uid 10001 modelmarket \
    && mkdir -p /data \
    && chown modelmarket /data
USER 10001
VOLUME ["/data"]
EXPOSE 8000

CMD ["/app/.venv/bin/modelmarket", "run"]
