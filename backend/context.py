"""The application context: what the lifespan builds once and every request uses.

One typed object, `app.state.context`, instead of loose attributes on `app.state`: the
infrastructure (settings, the engine and its sessions, the Redis client) as fields, and each
domain's long-lived services (`AccountTools`, `ShipmentTools`, ...) as one object of that
domain's own type, provided by the lifespan and looked up by that type. Domains define their part
next to their dependencies, so this module knows none of them and any package may import it.

Reading it costs what reading one `app.state` attribute did, plus a dict lookup per part: cheap
enough for the dependencies that authenticate every request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.applications import Starlette
from starlette.requests import HTTPConnection

from backend.config import Settings

PartT = TypeVar("PartT")


@dataclass(eq=False, slots=True)
class AppContext:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    # Authentication and rate limits; live-update streams have connections of their own.
    redis: Redis
    # Set on SIGTERM (backend/cli.py): readiness turns 503 so that the load balancer stops
    # sending requests while those in flight finish.
    draining: bool = False
    _parts: dict[type, object] = field(default_factory=dict, init=False, repr=False)

    def provide(self, part: object) -> None:
        """Register a domain's services, found again by `part(type(part))`; once per type."""
        kind = type(part)
        if kind in self._parts:
            raise RuntimeError(f"a {kind.__name__} was already provided")
        self._parts[kind] = part

    def part(self, kind: type[PartT]) -> PartT:
        """The services the lifespan provided as a `kind` (exactly that type, not a subclass)."""
        found = self._parts.get(kind)
        if found is None:
            raise RuntimeError(f"the lifespan provided no {kind.__name__}")
        assert isinstance(found, kind)  # `provide` keys each part by its own type
        return found


def context_of(connection: HTTPConnection) -> AppContext:
    """The context of the app serving `connection` (a request or a websocket)."""
    try:
        context: AppContext = connection.app.state.context
    except AttributeError:
        raise RuntimeError("the application's lifespan has not built its context") from None
    return context


def app_context(app: Starlette) -> AppContext:
    """The context of a started app."""
    context = started_context(app)
    if context is None:
        raise RuntimeError("the application's lifespan has not built its context")
    return context


def started_context(app: Starlette) -> AppContext | None:
    """The app's context, or None before its lifespan has built it (a signal during startup)."""
    context = getattr(app.state, "context", None)
    return context if isinstance(context, AppContext) else None
