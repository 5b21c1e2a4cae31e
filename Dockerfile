# syntax=docker/dockerfile:1
# Production image: no embedded PostgreSQL/Redis, runs as a non-root user. Migrations are a
# separate step: `docker run ... shiptrack migrate` (the compose file has a `migrate` service).

ARG PYTHON_VERSION=3.11
ARG UV_VERSION=0.13.9

# --- Dependencies and the application, installed from the lock into /app/.venv --------------
FROM python:${PYTHON_VERSION}-slim AS build
ARG UV_VERSION
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never
RUN pip install --no-cache-dir "uv==${UV_VERSION}"
WORKDIR /app
# Dependencies first: this layer is rebuilt only when the lock changes.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY backend ./backend
RUN uv sync --frozen --no-dev --no-editable
# Scalar's and Swagger UI's assets (pinned and checked against their sha512), so /scalar and
# /docs need no CDN. Standard library only; a failed download or checksum fails the build.
RUN python -c "from pathlib import Path; from backend.reference_assets import fetch; \
fetch(root=Path('/static'))"

# --- Runtime -------------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim AS runtime
RUN groupadd --system --gid 10001 shiptrack \
 && useradd --system --uid 10001 --gid shiptrack --home-dir /app --no-create-home shiptrack
WORKDIR /app
COPY --from=build /app/.venv /app/.venv
COPY alembic.ini ./
COPY migrations ./migrations
COPY --from=build /static /app/static
ENV PATH="/app/.venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ENVIRONMENT=production \
    HOST=0.0.0.0 \
    PORT=8000 \
    SCALAR_JS_PATH=/app/static/scalar/standalone.js \
    SWAGGER_UI_DIR=/app/static/swagger-ui \
    ALEMBIC_CONFIG=/app/alembic.ini
USER shiptrack
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"PORT\"]}/health/live', timeout=2)"]
CMD ["shiptrack", "serve"]
