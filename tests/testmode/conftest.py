"""Test mode's webhooks go to a receiver on loopback, through the webhook tests' fixtures."""

from tests.outbox.conftest import (  # noqa: F401 - fixtures
    make_worker,
    smtp_server,
    worker_settings,
)
from tests.webhooks.conftest import hook_worker, hooks, receiver  # noqa: F401 - fixtures
