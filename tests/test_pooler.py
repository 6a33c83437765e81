"""PostgreSQL behind a transaction pooler (PgBouncer): how revstore tells, and the
``prepare_threshold`` URL parameter that overrides it. The contract suites themselves
also run through PgBouncer (``pgbouncer`` in conftest's PGBOUNCER_SUITES)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from revstore import InvalidInput, Store
from revstore.backends.postgresql import AUTO, prepare_threshold


@pytest.mark.parametrize(
    ("url", "engine_url", "threshold"),
    [
        ("postgresql://u@h/db", "postgresql://u@h/db", AUTO),
        ("postgresql://u@h/db?prepare_threshold=auto", "postgresql://u@h/db", AUTO),
        ("postgresql://u@h/db?prepare_threshold=none", "postgresql://u@h/db", None),
        ("postgresql://u@h/db?prepare_threshold=NONE", "postgresql://u@h/db", None),
        ("postgresql://u@h/db?prepare_threshold=0", "postgresql://u@h/db", 0),
        (
            "postgresql://u@h/db?sslmode=disable&prepare_threshold=12&connect_timeout=3",
            "postgresql://u@h/db?sslmode=disable&connect_timeout=3",
            12,
        ),
    ],
)
def test_the_prepare_threshold_parameter_is_taken_off_the_url(
    url: str, engine_url: str, threshold: int | str | None
) -> None:
    assert prepare_threshold(url) == (engine_url, threshold)


@pytest.mark.parametrize("value", ["-1", "lots", "1e3", "٣", "9999999"])
def test_a_bad_prepare_threshold_is_invalid_input(value: str) -> None:
    with pytest.raises(InvalidInput, match="prepare_threshold"):
        Store(f"postgresql://postgres@127.0.0.1:1/test?prepare_threshold={value}")


def _threshold_of_a_pooled_connection(store: Store) -> object:
    store.put("probe", {"n": 1}, namespace="t-pooler")
    raw = store.backend.engine.raw_connection()
    try:
        return raw.driver_connection.prepare_threshold  # type: ignore[union-attr]
    finally:
        raw.close()


def test_a_connection_through_pgbouncer_never_prepares(server_url: Callable[[str], str]) -> None:
    # PgBouncer answers the start-up with a backend id of its own: revstore tells it
    # from the server's pg_backend_pid() and sends only unnamed statements.
    store = Store(server_url("pgbouncer"))
    try:
        assert _threshold_of_a_pooled_connection(store) is None
    finally:
        store.close()


def test_a_direct_connection_keeps_prepared_statements(server_url: Callable[[str], str]) -> None:
    store = Store(server_url("postgresql"))
    try:
        assert _threshold_of_a_pooled_connection(store) == 5
    finally:
        store.close()


def test_the_url_parameter_overrides_the_detection(server_url: Callable[[str], str]) -> None:
    store = Store(server_url("postgresql") + "?prepare_threshold=none")
    try:
        assert _threshold_of_a_pooled_connection(store) is None
    finally:
        store.close()


def _async_threshold(url: str) -> object:
    import asyncio

    from revstore.backends import open_async_backend

    async def main() -> object:
        backend = open_async_backend(url)
        try:
            # AsyncStore's own psycopg connections (backends.pgaio), and those of the
            # asyncio engine that creates the schema.
            link = await backend._connect(backend._checkout)
            try:
                ours = link.conn.prepare_threshold  # type: ignore[attr-defined]
            finally:
                await link.release()
            engine = await backend.engine()
            async with engine.connect() as conn:
                raw = await conn.get_raw_connection()
                theirs = raw.driver_connection.prepare_threshold  # type: ignore[union-attr]
            assert ours == theirs
            return ours
        finally:
            await backend.dispose()

    return asyncio.run(main())


def test_the_asyncio_engine_detects_the_pooler_too(server_url: Callable[[str], str]) -> None:
    """Same decision on psycopg's async connections (AsyncStore's executor and the
    asyncio engine it creates the schema with)."""
    assert _async_threshold(server_url("pgbouncer")) is None
    assert _async_threshold(server_url("postgresql")) == 5
    assert _async_threshold(server_url("postgresql") + "?prepare_threshold=none") is None
