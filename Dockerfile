# syntax=docker/dockerfile:1
#
# One image for every Assay process: the API (default command), `assay worker`,
# `assay beat`, `assay migrate` and Flower (`celery ... flower`). See docker-compose.yml.
#
#   docker build -t assay:latest .
#   docker run --rm -p 8000:8000 --env-file .env assay:latest

FROM python:3.11-slim

# uv is installed with pip, the same way CI installs it (.ci/run).
RUN python -m pip install --no-cache-dir --disable-pip-version-check uv

# UV_COMPILE_BYTECODE: compile .pyc at install time (the non-root user cannot write them later).
# UV_LINK_MODE=copy: the uv cache is a build mount, so hard links into it are not possible.
# UV_PYTHON / UV_PYTHON_DOWNLOADS: build the venv on the image's Python, never download one.
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PYTHON_DOWNLOADS=never \
    PYTHONUNBUFFERED=1

WORKDIR /app

# 1. Dependencies only, from the lock file: this layer is rebuilt only when they change.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --no-install-project

# 2. The application. The project is installed in editable mode (uv's default), so the code
#    runs from /app, where db/migrations.py finds alembic.ini and alembic/ next to it.
COPY api ./api
COPY use_cases ./use_cases
COPY services ./services
COPY repositories ./repositories
COPY ports ./ports
COPY workers ./workers
COPY db ./db
COPY schemas ./schemas
COPY client ./client
COPY alembic ./alembic
COPY alembic.ini main.py README.md ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev

# An unprivileged user; /data is the data folder (scratch space for workers, beat's schedule).
RUN groupadd --system --gid 10001 assay \
    && useradd --system --uid 10001 --gid assay --home-dir /app --shell /usr/sbin/nologin assay \
    && mkdir -p /data \
    && chown assay:assay /data

ENV PATH="/app/.venv/bin:$PATH" \
    ASSAY_DATA_DIR=/data

USER assay
EXPOSE 8000

CMD ["assay", "api", "--host", "0.0.0.0", "--port", "8000"]
