"""``revstore serve``: uvicorn over the app factory.

Options reach the worker processes through the environment (``Settings.to_env``),
because uvicorn starts each worker from the import string, not from this process's
objects.
"""

from __future__ import annotations

import os
import sys

import uvicorn

from revstore.errors import Unavailable
from revstore.retry import RetryPolicy
from revstore.service.logs import log_config
from revstore.service.settings import ENV_MAX_OVERFLOW, ENV_POOL_SIZE, Settings
from revstore.store import Store

FACTORY = "revstore.service.app:app_factory"


def prepare(settings: Settings) -> None:
    """Check the URL (InvalidInput) and create the tables once, before workers race to
    do it. A database that is down is not fatal: the server starts, /readyz says 503."""
    store = Store(settings.url, retry=RetryPolicy(max_attempts=3, max_seconds=3.0))
    try:
        store.create_schema()
    except Unavailable as exc:
        print(f"revstore serve: database not reachable yet: {exc}", file=sys.stderr)
    finally:
        store.close()


def serve(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    log_level: str = "info",
) -> None:
    env = settings.to_env()
    for name in (ENV_POOL_SIZE, ENV_MAX_OVERFLOW):
        # Not command options: an operator's environment value stands.
        if os.environ.get(name):
            env.pop(name)
    os.environ.update(env)
    uvicorn.run(
        FACTORY,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=log_config(log_level),
        log_level=log_level,
        # One JSON line per request comes from the app itself.
        access_log=False,
        # Connections are many short requests from a few clients: keep them.
        timeout_keep_alive=30,
        timeout_graceful_shutdown=10,
    )
