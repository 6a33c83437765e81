"""Retention in a running service: the records this worker wrote are compacted within
seconds, by a background task of the app's lifespan (``revstore.retention`` says what
a policy keeps and how removal goes in small transactions).

Only the records written through this worker are looked at (not whole namespaces), so
the work follows the writes; a namespace with more than ``MAX_DIRTY`` records written
in one interval is applied whole. Writes made elsewhere (another service, the library)
are compacted by their own service or by ``revstore retention apply``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from revstore.async_store import AsyncStore
from revstore.errors import RevstoreError

log = logging.getLogger("revstore.service")

MAX_DIRTY = 10_000
POLICY_SECONDS = 10.0
"""How long the set of namespaces with a policy is trusted before it is read again."""


class RetentionWorker:
    def __init__(self, store: Callable[[], AsyncStore], interval: float) -> None:
        self.store = store
        self.interval = interval
        self._dirty: dict[str, set[str] | None] = {}
        self._policies: set[str] = set()
        self._policies_at = float("-inf")

    def touched(self, namespace: str, record_id: str) -> None:
        """A write of ``record_id`` in ``namespace`` committed."""
        ids = self._dirty.setdefault(namespace, set())
        if ids is not None:
            ids.add(record_id)
            if len(ids) > MAX_DIRTY:
                self._dirty[namespace] = None  # the whole namespace, once

    async def run(self) -> None:
        """Apply what is due every ``interval`` seconds until cancelled; failures are
        logged and the work is tried again at the next round."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.apply_due()
            except asyncio.CancelledError:
                raise
            except RevstoreError as exc:
                log.warning("retention: %s", exc, extra={"event": "retention_failed"})
            except Exception:
                log.exception("retention failed", extra={"event": "retention_failed"})

    async def apply_due(self) -> int:
        """Compact the records written since the last round; versions removed."""
        if not self._dirty:
            return 0
        dirty, self._dirty = self._dirty, {}
        store = self.store()
        if time.monotonic() - self._policies_at > POLICY_SECONDS:
            self._policies = {p.namespace for p in await store.get_retention()}
            self._policies_at = time.monotonic()
        removed = 0
        for namespace, ids in dirty.items():
            if namespace not in self._policies:
                continue
            try:
                report = await store.apply_retention(
                    namespace, records=None if ids is None else sorted(ids)
                )
            except BaseException:
                # Not lost: tried again at the next round.
                merged = self._dirty.setdefault(namespace, set())
                if merged is not None:
                    if ids is None:
                        self._dirty[namespace] = None
                    else:
                        merged.update(ids)
                raise
            removed += report.versions_removed
            if report.versions_removed:
                log.info(
                    "retention removed %d versions of %d records in %s",
                    report.versions_removed,
                    report.records,
                    namespace,
                    extra={"event": "retention", "namespace": namespace},
                )
        return removed

    def forget_policies(self) -> None:
        """A policy changed here: read them again at the next round."""
        self._policies_at = float("-inf")
