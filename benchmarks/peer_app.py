"""The hand-written peer of ``revstore serve`` for ``bench_http_peer.py``: the FastAPI app a
user would write in an afternoon. PUT = one upsert that bumps the head and keeps a
snapshot; GET = one SELECT. No preconditions, idempotency keys or limits.

    PEER_DB=postgresql://postgres@127.0.0.1:5432/test uvicorn peer_app:app --app-dir benchmarks
    PEER_DB=sqlite:////tmp/peer.db uvicorn peer_app:app --app-dir benchmarks --workers 2
"""

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Response
from pydantic import BaseModel

DB = os.environ.get("PEER_DB", "postgresql://postgres@127.0.0.1:5432/test")
PG = DB.startswith("postgresql")
COLS = "namespace, id, revision, version, content, content_hash, created_at, updated_at"
TABLES = [
    f"""CREATE TABLE IF NOT EXISTS peer_records (namespace TEXT, id TEXT, revision BIGINT,
    version BIGINT, content {"JSONB" if PG else "TEXT"}, content_hash TEXT,
    created_at {"TIMESTAMPTZ" if PG else "TEXT"}, updated_at {"TIMESTAMPTZ" if PG else "TEXT"},
    PRIMARY KEY (namespace, id))""",
    f"""CREATE TABLE IF NOT EXISTS peer_versions (namespace TEXT, id TEXT, version BIGINT,
    revision BIGINT, content {"JSONB" if PG else "TEXT"}, content_hash TEXT,
    created_at {"TIMESTAMPTZ" if PG else "TEXT"}, PRIMARY KEY (namespace, id, version))""",
]
NOW = "now()" if PG else "strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')"
P = "%s" if PG else "?"
UPSERT = f"""INSERT INTO peer_records AS r ({COLS}) VALUES ({P}, {P}, 1, 1, {P}, {P}, {NOW}, {NOW})
ON CONFLICT (namespace, id) DO UPDATE SET revision = r.revision + 1, version = r.version + 1,
  content = excluded.content, content_hash = excluded.content_hash, updated_at = {NOW}
RETURNING {COLS}"""
# PostgreSQL: the snapshot rides in the same statement (a CTE); SQLite: a second one.
PG_PUT = f"""WITH head AS ({UPSERT}), snap AS (INSERT INTO peer_versions
  SELECT namespace, id, version, revision, content, content_hash, updated_at FROM head)
SELECT * FROM head"""
SQLITE_SNAPSHOT = "INSERT INTO peer_versions VALUES (?, ?, ?, ?, ?, ?, ?)"
GET = f"SELECT {COLS} FROM peer_records WHERE namespace = {P} AND id = {P}"


class PutRecord(BaseModel):
    content: Any


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    if PG:
        from psycopg.rows import dict_row
        from psycopg_pool import AsyncConnectionPool

        # Autocommit: each request is one statement, so no BEGIN/COMMIT round trips.
        kwargs = {"row_factory": dict_row, "autocommit": True}
        app.state.pool = AsyncConnectionPool(DB, min_size=16, kwargs=kwargs, open=False)
        await app.state.pool.open()
        async with app.state.pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(4242)")  # workers start together
            for ddl in TABLES:
                await conn.execute(ddl)
        yield
        await app.state.pool.close()
    else:
        import aiosqlite

        path = DB.removeprefix("sqlite:///")
        # One connection writes (behind a lock: one transaction at a time), one reads.
        app.state.w = await aiosqlite.connect(path, timeout=30, isolation_level=None)
        app.state.r = await aiosqlite.connect(path, timeout=30, isolation_level=None)
        app.state.lock = asyncio.Lock()
        app.state.w.row_factory = app.state.r.row_factory = aiosqlite.Row
        for attempt in range(50):  # the other worker may be switching to WAL right now
            try:
                await app.state.w.execute("PRAGMA journal_mode=WAL")
                for ddl in TABLES:
                    await app.state.w.execute(ddl)
                break
            except aiosqlite.OperationalError:
                if attempt == 49:
                    raise
                await asyncio.sleep(0.1)
        yield
        await app.state.w.close()
        await app.state.r.close()


app = FastAPI(lifespan=lifespan)


def reply(row: Any, response: Response) -> dict[str, Any]:
    out = dict(row)
    if not PG:
        out["content"] = json.loads(out["content"])
    response.headers["ETag"] = f'"{out["revision"]}"'
    return out


@app.put("/v1/records/{id}")
async def put_record(
    id: str, body: PutRecord, response: Response, namespace: str = "default"
) -> dict[str, Any]:
    text = json.dumps(body.content, sort_keys=True, separators=(",", ":"))
    args = (namespace, id, text, hashlib.sha256(text.encode()).hexdigest())
    if PG:
        async with app.state.pool.connection() as conn:
            row = await (await conn.execute(PG_PUT, args)).fetchone()
    else:
        async with app.state.lock:
            db = app.state.w
            await db.execute("BEGIN IMMEDIATE")
            try:
                row = await (await db.execute(UPSERT, args)).fetchone()
                snap = (namespace, id, row["version"], row["revision"], text, args[3])
                await db.execute(SQLITE_SNAPSHOT, (*snap, row["updated_at"]))
                await db.execute("COMMIT")
            except BaseException:
                await db.execute("ROLLBACK")
                raise
    response.status_code = 201 if row["revision"] == 1 else 200
    return reply(row, response) | {"unchanged": False}


@app.get("/v1/records/{id}")
async def get_record(id: str, response: Response, namespace: str = "default") -> dict[str, Any]:
    if PG:
        async with app.state.pool.connection() as conn:
            row = await (await conn.execute(GET, (namespace, id))).fetchone()
    else:
        row = await (await app.state.r.execute(GET, (namespace, id))).fetchone()
    if row is None:
        raise HTTPException(404, "record not found")
    return reply(row, response)
