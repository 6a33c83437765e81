"""Concurrency on every backend: many threads, and several processes, on one hot
record / stream and spread over many; then the invariants are checked.

PostgreSQL runs twice: directly, and through PgBouncer in transaction pooling mode
(``pgbouncer``, see ``PGBOUNCER_SUITES`` in conftest), where each transaction may get
a different server connection: how multi-pod deployments usually reach it.
"""

from __future__ import annotations

import pytest

from racers import (
    check_records,
    check_streams,
    run_processes,
    run_record_threads,
    run_stream_threads,
    seed_records,
    seed_streams,
)

SECONDS = 2.0


def test_hot_record_32_threads(backend_url: str, ns: str, api: str) -> None:
    keys = ["hot"]
    seed_records(backend_url, ns, keys)
    out = run_record_threads(backend_url, ns, keys, threads=32, seconds=SECONDS, tag="t", api=api)
    check_records(backend_url, ns, keys, out)
    assert out.conflicts > 0, "careful writers never met a conflict: the test raced nothing"


@pytest.mark.slow
def test_hot_record_4_processes_x_8_threads(backend_url: str, ns: str, api: str) -> None:
    keys = ["hot"]
    seed_records(backend_url, ns, keys)
    out = run_processes(
        "records", backend_url, ns, keys, processes=4, threads=8, seconds=SECONDS, api=api
    )
    check_records(backend_url, ns, keys, out)
    assert out.conflicts > 0


@pytest.mark.slow
def test_400_records_4_processes_x_8_threads(backend_url: str, ns: str, api: str) -> None:
    keys = [f"r{k}" for k in range(400)]
    seed_records(backend_url, ns, keys)
    out = run_processes(
        "records", backend_url, ns, keys, processes=4, threads=8, seconds=SECONDS, api=api
    )
    check_records(backend_url, ns, keys, out)


@pytest.mark.slow
def test_400_records_32_threads(backend_url: str, ns: str, api: str) -> None:
    keys = [f"r{k}" for k in range(400)]
    seed_records(backend_url, ns, keys)
    out = run_record_threads(backend_url, ns, keys, threads=32, seconds=SECONDS, tag="t", api=api)
    check_records(backend_url, ns, keys, out)


def test_hot_stream_32_threads(backend_url: str, ns: str, api: str) -> None:
    keys = ["chat"]
    seed_streams(backend_url, ns, keys)
    out = run_stream_threads(backend_url, ns, keys, threads=32, seconds=SECONDS, tag="t", api=api)
    check_streams(backend_url, ns, keys, out)
    assert out.resent > 0, "no re-sent batch was answered as a duplicate"


@pytest.mark.slow
def test_hot_stream_4_processes_x_8_threads(backend_url: str, ns: str, api: str) -> None:
    keys = ["chat"]
    seed_streams(backend_url, ns, keys)
    out = run_processes(
        "streams", backend_url, ns, keys, processes=4, threads=8, seconds=SECONDS, api=api
    )
    check_streams(backend_url, ns, keys, out)


@pytest.mark.slow
def test_200_streams_4_processes_x_8_threads(backend_url: str, ns: str, api: str) -> None:
    keys = [f"s{k}" for k in range(200)]
    seed_streams(backend_url, ns, keys)
    out = run_processes(
        "streams", backend_url, ns, keys, processes=4, threads=8, seconds=SECONDS, api=api
    )
    check_streams(backend_url, ns, keys, out)
