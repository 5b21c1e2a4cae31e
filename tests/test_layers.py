"""The packages of backend/ read downwards: no module imports one from a layer above its own.

Every module is parsed (not imported), so an import inside a function or under TYPE_CHECKING
counts as much as one at the top. The order is the one backend/__init__.py describes.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

BACKEND = Path(__file__).resolve().parent.parent / "backend"

# Lowest first. A module may import from its own layer and those below it. An entry names a
# module or a package (and then everything under it).
LAYERS: list[list[str]] = [
    # settings, errors, logging
    ["backend.config", "backend.errors", "backend.logging_setup"],
    # the application context: what the lifespan builds, typed, knowing no domain
    ["backend.context"],
    # the database and Redis, and what routes and schemas are built from
    [
        "backend.db",
        "backend.redis_client",
        "backend.rate_limit",
        "backend.pagination",
        "backend.fields",
        "backend.request_body",
        "backend.auth_schemes",
        "backend.pages",
    ],
    ["backend.outbox"],
    ["backend.accounts"],
    ["backend.webhooks"],
    ["backend.shipments"],
    ["backend.testmode"],
    # what assembles the domains into processes and documents
    [
        "backend.worker",
        "backend.retention",
        "backend.models",
        "backend.demo",
        "backend.partner_commands",
        "backend.health",
        "backend.openapi",
        "backend.reference",
        "backend.reference_assets",
        "backend.error_handlers",
        "backend.middleware",
        "backend.embedded",
    ],
    ["backend.main"],
    ["backend.cli"],
]


def layer_of(module: str) -> int | None:
    """The layer of a module (`backend` itself, the package docstring, sits below them all)."""
    if module == "backend":
        return -1
    for index, entries in enumerate(LAYERS):
        if any(module == entry or module.startswith(entry + ".") for entry in entries):
            return index
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(BACKEND.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(tree: ast.AST, module: str, *, is_package: bool) -> Iterator[tuple[int, str]]:
    """(line, module) for every import of a backend module, relative imports resolved."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            yield node.lineno, source
            # `from backend import webhooks` imports the package webhooks, not just `backend`.
            for alias in node.names:
                yield node.lineno, f"{source}.{alias.name}"


def violations(source: str, module: str, *, is_package: bool = False) -> list[str]:
    own = layer_of(module)
    assert own is not None, f"{module} is in no layer: add it to LAYERS in {__name__}"
    found: list[str] = []
    for line, imported in imported_modules(ast.parse(source), module, is_package=is_package):
        if imported != "backend" and not imported.startswith("backend."):
            continue
        target = layer_of(imported)
        if target is None:
            found.append(f"{module}:{line} imports {imported}, which is in no layer")
        elif target > own:
            found.append(
                f"{module}:{line} imports {imported} (layer {target}) from layer {own}: "
                "a package may only import from its own layer and those below"
            )
    return found


MODULES = sorted(BACKEND.rglob("*.py"))


def test_every_module_is_found() -> None:
    assert len(MODULES) > 50
    assert {module_name(path) for path in MODULES} >= {"backend.shipments.service", "backend.cli"}


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_imports_read_downwards(path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    assert violations(source, module_name(path), is_package=path.name == "__init__.py") == []


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("backend.webhooks.service", "from backend.shipments.models import Shipment\n"),
        ("backend.accounts.router", "from backend.webhooks.router import webhooks_router\n"),
        ("backend.shipments.service", "from backend.worker import OutboxWorker\n"),
        ("backend.shipments.service", "from backend import worker\n"),
        ("backend.accounts.dependencies", "from backend.openapi import route_security\n"),
        ("backend.outbox.outbox", "def f():\n    import backend.accounts.models\n"),
        ("backend.webhooks.events", "from ..shipments import models\n"),
        ("backend.shipments.service", "from backend.notifications.events import EventPublisher\n"),
    ],
)
def test_an_upward_import_is_caught(module: str, source: str) -> None:
    assert violations(source, module)


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("backend.shipments.service", "from backend.webhooks.events import EventPublisher\n"),
        ("backend.shipments.service", "from backend.shipments.live import announce_after_commit\n"),
        ("backend.accounts.emails", "from backend.outbox import wording\n"),
        ("backend.main", "from . import worker\n"),
    ],
)
def test_a_downward_import_passes(module: str, source: str) -> None:
    assert violations(source, module) == []
