"""Schemathesis over every route of the app, in-process on SQLite: at least 6,000
generated requests (valid and invalid: positive and negative generation, the coverage
phase's boundary values, and fuzzing), with 0 server errors and every response
conforming to the documented schema (status code, content type, headers, body).

Slow (a few minutes): run with ``-m slow``. The quick pass over every operation is in
``test_service_fuzz.py``.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fuzz_schema import CHECKS, app_schema
from hypothesis import HealthCheck, settings

from revstore import Store

MIN_CASES = 6_000
EXAMPLES_PER_OPERATION = 400
"""Fuzzing examples per operation; the coverage phase adds its own cases. Operations
without parameters (``/healthz``) run out of distinct inputs far earlier."""

# Collected at import (schemathesis' lazy loader does not work with pytest 9): the app
# and its SQLite file are made here and removed when the module's tests end.
# On tmpfs where there is one: the run exercises the HTTP layer, and thousands of fsyncs of a
# disk shared with other jobs would only make it slower.
_shm = Path("/dev/shm")
_dir = Path(tempfile.mkdtemp(prefix="revstore-schemathesis-", dir=_shm if _shm.is_dir() else None))
_store = Store(f"sqlite:///{_dir / 'fuzz.db'}")
schema = app_schema(_store, idempotency_wait=0.2)

# One xdist worker runs the whole module (``--dist loadgroup``): test_zz counts the cases
# run in its own process, and the module's store is closed when its fixture ends.
pytestmark = pytest.mark.xdist_group("schemathesis")

_cases: Counter[str] = Counter()
_statuses: Counter[int] = Counter()


@pytest.fixture(scope="module", autouse=True)
def _seeded() -> Iterator[None]:
    # One info line per request is thousands of lines: keep warnings and errors (a 500's
    # stack) only.
    http_log = logging.getLogger("revstore.http")
    level = http_log.level
    http_log.setLevel(logging.WARNING)
    # Records and streams that exist, so that generated ids sometimes hit them.
    for id in ("a", "b", "0", "1"):
        _store.put(id, {"seed": id})
        _store.put(id, {"seed": id, "v": 2})
        _store.append(id, [1, 2, 3], item_ids=[f"{id}1", f"{id}2", f"{id}3"])
    yield
    http_log.setLevel(level)
    _store.close()
    shutil.rmtree(_dir, ignore_errors=True)


@pytest.mark.slow
@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
)
def test_every_route_under_generated_requests(case: schemathesis.Case[Any]) -> None:
    response = case.call_and_validate(checks=CHECKS)
    _cases[f"{case.method.upper()} {case.path}"] += 1
    _statuses[response.status_code] += 1


@pytest.mark.slow
def test_zz_enough_cases_ran() -> None:
    """Runs after the generated cases (file order): the total, per operation."""
    total = sum(_cases.values())
    if total == 0:
        pytest.skip("the generated cases were not selected in this run")
    statuses = dict(sorted(_statuses.items()))
    print(f"\n{total} generated requests; responses by status: {statuses}")
    # Negative cases also try other methods on each path (405): shown as one line.
    other = sum(n for op, n in _cases.items() if n == 1)
    print("\n".join(f"{n:6d}  {op}" for op, n in sorted(_cases.items()) if n > 1))
    print(f"{other:6d}  other methods on the documented paths")
    assert not [s for s in _statuses if s >= 500]
    assert total >= MIN_CASES, f"only {total} cases ran"
