# Every command anyone needs. The first target run builds .venv from the committed uv.lock.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
# The local commands run in development mode (the embedded services, a dev-only JWT key);
# anything else must say ENVIRONMENT=production and bring its own JWT_SECRET_KEY.
export ENVIRONMENT ?= dev

.PHONY: run test demo check lint typecheck fmt migrate revision openapi install assets browser clean bench

run: install ## Serve the API on 127.0.0.1:8000 (embedded PostgreSQL + Redis unless URLs are set)
	$(BIN)/shiptrack serve

test: install browser ## Run the whole test suite (embedded services unless TEST_DATABASE_URL/TEST_REDIS_URL)
	$(BIN)/pytest

demo: install ## Seed demo accounts and shipments into the service's database; prints tokens and links
	$(BIN)/shiptrack demo

check: lint typecheck ## Lint, format check and strict type check

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

fmt: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

migrate: install ## Apply migrations (to DATABASE_URL, or the embedded database)
	$(BIN)/shiptrack migrate

revision: install ## New migration from model changes: make revision m="add shipments"
	$(BIN)/alembic revision --autogenerate -m "$(m)"

openapi: install
	@$(BIN)/shiptrack openapi

bench: install ## API vs the floor app under wrk (local PostgreSQL + Redis, scratch database)
	bash bench/run.sh

install: $(VENV)/.synced assets

$(VENV)/.synced: uv.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"
	# --inexact keeps uv itself, which the lock does not list.
	$(BIN)/uv sync --frozen --inexact --all-extras
	@touch $@

# Scalar's and Swagger UI's assets come from the npm registry (checked against their published
# sha512), so /scalar and /docs work offline; without network access the pages load the same
# pinned files from the CDN instead. Never committed.
assets: $(VENV)/.synced
	@$(BIN)/python -m backend.reference_assets

# Browser tests drive Debian's Chromium where it is installed (CI: apt-get install chromium);
# elsewhere Playwright installs its own build once, so `make test` needs only Python and make.
browser: $(VENV)/.synced
	@if [ -z "$$CHROMIUM" ] && [ ! -x /usr/bin/chromium ]; then \
		$(BIN)/playwright install chromium; \
	fi

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
