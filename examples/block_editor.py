"""A block editor's backend: autosave every few seconds without filling the history,
an explicit save that makes a version, and a save that lost a race answered with 409
and the current revision (the client merges and saves again).

- ``PUT /blocks/{id}/autosave``: the head and its revision change, no snapshot
  (``create_version = False``);
- ``POST /blocks/{id}/save``: a new version; with ``expected_revision`` (or an
  ``If-Match: "<revision>"`` header) it is refused with **409** and the current
  revision when someone saved or autosaved since the client loaded the block.

    uvicorn --factory examples.block_editor:app_from_env   # REVSTORE_URL=sqlite:///blocks.db
"""

from __future__ import annotations

import os
from typing import Annotated, Any

from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import Engine, String, Text, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

import revstore.sqlalchemy as rs
from revstore import InvalidInput, NotFound, VersionConflict
from revstore.config import parse_url


class Base(DeclarativeBase):
    pass


class Block(rs.Versioned, Base):
    __tablename__ = "be_blocks"
    id: Mapped[int] = mapped_column(primary_key=True)
    document: Mapped[str] = mapped_column(String(100), index=True)
    kind: Mapped[str] = mapped_column(String(20), default="paragraph")
    body: Mapped[str] = mapped_column(Text)


class NewBlock(BaseModel):
    document: str = Field(min_length=1, max_length=100)
    kind: str = Field(default="paragraph", min_length=1, max_length=20)
    body: str = Field(max_length=100_000)


class Edit(BaseModel):
    body: str = Field(max_length=100_000)
    expected_revision: int | None = Field(default=None, ge=0)
    author: str | None = Field(default=None, max_length=200)
    summary: str | None = Field(default=None, max_length=1000)


def block_json(block: Block) -> dict[str, Any]:
    return {
        "id": block.id,
        "document": block.document,
        "kind": block.kind,
        "body": block.body,
        "revision": block.revision,
        "version": block.version,
    }


def make_engine(url: str) -> Engine:
    args = {"connect_args": {"timeout": 30}} if url.startswith("sqlite") else {}
    return create_engine(parse_url(url).sqlalchemy(), **args)


def expectation(edit: Edit, if_match: str | None) -> int | None:
    """The body's ``expected_revision``, else ``If-Match: "<revision>"``."""
    if edit.expected_revision is not None or if_match is None:
        return edit.expected_revision
    tag = if_match.strip().removeprefix("W/").strip('"')
    if not tag.isdigit():
        raise HTTPException(400, f"If-Match must be a revision in quotes, got {if_match!r}")
    return int(tag)


def create_app(engine: Engine) -> FastAPI:
    sessions = sessionmaker(engine, expire_on_commit=False)
    app = FastAPI(title="block editor")

    @app.exception_handler(VersionConflict)
    def conflict(_request: Request, exc: VersionConflict) -> JSONResponse:
        # 409 with what the client needs to merge: the head's revision (and ETag).
        return JSONResponse(
            status_code=409,
            content={
                "detail": str(exc),
                "current_revision": exc.current_revision,
                "current_version": exc.current_version,
            },
            headers={"ETag": f'"{exc.current_revision}"'},
        )

    @app.exception_handler(NotFound)
    def not_found(_request: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": str(exc)})

    @app.exception_handler(InvalidInput)
    def invalid(_request: Request, exc: InvalidInput) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": str(exc)})

    def load(session: Session, block_id: int) -> Block:
        block = session.get(Block, block_id)
        if block is None:
            raise NotFound(f"block {block_id} does not exist")
        return block

    def write(block_id: int, edit: Edit, expected: int | None, snapshot: bool) -> JSONResponse:
        def work(session: Session) -> dict[str, Any]:
            block = load(session, block_id)
            block.body = edit.body
            rs.set_change(
                block,
                author=edit.author,
                summary=edit.summary,
                create_version=snapshot,
                expected_revision=expected,
            )
            session.flush()  # the revision is taken here, by the UPDATE
            return block_json(block)

        # Re-run on deadlocks and serialization failures; never on a VersionConflict.
        doc = rs.transaction(sessions).run(work)
        return JSONResponse(doc, headers={"ETag": f'"{doc["revision"]}"'})

    @app.post("/blocks", status_code=201)
    def create(new: NewBlock) -> JSONResponse:
        def work(session: Session) -> dict[str, Any]:
            block = Block(document=new.document, kind=new.kind, body=new.body)
            session.add(block)
            session.flush()
            return block_json(block)

        doc = rs.transaction(sessions).run(work)
        return JSONResponse(doc, status_code=201, headers={"ETag": f'"{doc["revision"]}"'})

    @app.get("/blocks/{block_id}")
    def get(block_id: int) -> JSONResponse:
        with sessions() as session:
            doc = block_json(load(session, block_id))
        return JSONResponse(doc, headers={"ETag": f'"{doc["revision"]}"'})

    @app.put("/blocks/{block_id}/autosave")
    def autosave(
        block_id: int, edit: Edit, if_match: Annotated[str | None, Header()] = None
    ) -> JSONResponse:
        return write(block_id, edit, expectation(edit, if_match), snapshot=False)

    @app.post("/blocks/{block_id}/save")
    def save(
        block_id: int, edit: Edit, if_match: Annotated[str | None, Header()] = None
    ) -> JSONResponse:
        return write(block_id, edit, expectation(edit, if_match), snapshot=True)

    @app.get("/blocks/{block_id}/versions")
    def versions(block_id: int, after: int = 0, limit: int = 100) -> dict[str, Any]:
        with sessions() as session:
            snaps = rs.history(session, load(session, block_id), after=after, limit=limit)
        return {
            "versions": [
                {
                    "version": s.version,
                    "revision": s.revision,
                    "body": s.body,
                    "author": s.author,
                    "summary": s.summary,
                    "created_at": s.created_at.isoformat(),
                }
                for s in snaps
            ]
        }

    return app


def app_from_env() -> FastAPI:
    engine = make_engine(os.environ.get("REVSTORE_URL", "sqlite:///blocks.db"))
    Base.metadata.create_all(engine)
    return create_app(engine)
