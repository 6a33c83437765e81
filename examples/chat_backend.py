"""An async chat backend: FastAPI + ``AsyncSession``, several uvicorn workers appending
messages to one conversation, clients re-sending what they got no answer for.

``Message`` is ``Sequenced`` per chat: each message takes the next number of its chat
atomically at flush (gapless, unique, whatever the number of workers), and its
``item_id`` makes a re-send a no-op that returns the stored message — the bug this
replaces is a sequence computed from a count read before the transaction.

    python -m examples.chat_backend postgresql://…          # creates the tables
    REVSTORE_URL=postgresql://… uvicorn --factory examples.chat_backend:app_from_env --workers 4
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field
from sqlalchemy import BigInteger, ForeignKey, Integer, String, Text, create_engine, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import revstore.sqlalchemy as rs
from revstore.config import ASYNC_DRIVERS, parse_url


class Base(DeclarativeBase):
    pass


class Chat(Base):
    __tablename__ = "ch_chats"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200), default="")


class Message(rs.Sequenced, Base):
    """``sequence`` (and the counter table ch_messages_sequences) come from Sequenced."""

    __tablename__ = "ch_messages"
    __sequence_scope__ = "chat_id"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    chat_id: Mapped[int] = mapped_column(ForeignKey(Chat.id), nullable=False)
    item_id: Mapped[str | None] = mapped_column(String(64))  # the client's idempotency key
    role: Mapped[str] = mapped_column(String(20))
    text: Mapped[str] = mapped_column(Text)


class NewMessage(BaseModel):
    item_id: str | None = Field(default=None, min_length=1, max_length=64)
    role: str = Field(pattern="^(user|assistant|system)$")
    text: str = Field(max_length=100_000)


class NewChat(BaseModel):
    title: str = Field(default="", max_length=200)


def message_json(m: Message) -> dict[str, Any]:
    return {"sequence": m.sequence, "item_id": m.item_id, "role": m.role, "text": m.text}


def create_schema(url: str) -> None:
    """Create the tables once, before the workers start (not in each worker)."""
    engine = create_engine(parse_url(url).sqlalchemy())
    Base.metadata.create_all(engine)
    engine.dispose()


def create_app(url: str) -> FastAPI:
    parsed = parse_url(url)
    engine = create_async_engine(parsed.sqlalchemy(driver=ASYNC_DRIVERS[parsed.backend]))
    sessions = async_sessionmaker(engine, expire_on_commit=False)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await engine.dispose()

    app = FastAPI(title="chat", lifespan=lifespan)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/chats", status_code=201)
    async def new_chat(body: NewChat) -> dict[str, Any]:
        async def work(session: AsyncSession) -> int:
            chat = Chat(title=body.title)
            session.add(chat)
            await session.flush()
            return chat.id

        return {"id": await rs.async_transaction(sessions).run(work)}

    @app.post("/chats/{chat_id}/messages", status_code=201)
    async def post_message(chat_id: int, body: NewMessage) -> dict[str, Any]:
        async def work(session: AsyncSession) -> dict[str, Any]:
            if await session.get(Chat, chat_id) is None:
                raise HTTPException(404, f"chat {chat_id} does not exist")
            new = Message(chat_id=chat_id, item_id=body.item_id, role=body.role, text=body.text)
            # A re-sent item_id writes nothing: the stored message comes back.
            stored = await rs.async_add_sequenced(session, new)
            return {**message_json(stored), "duplicate": stored is not new}

        # Re-run whole on deadlocks and serialization failures.
        return await rs.async_transaction(sessions).run(work)

    @app.get("/chats/{chat_id}/messages")
    async def messages(chat_id: int, after: int = 0, limit: int = 100) -> dict[str, Any]:
        if not 1 <= limit <= 1000 or after < 0:
            raise HTTPException(422, "limit must be 1..1000 and after >= 0")
        async with sessions() as session:
            rows = (
                await session.scalars(
                    select(Message)
                    .where(Message.chat_id == chat_id, Message.sequence > after)
                    .order_by(Message.sequence)
                    .limit(limit)
                )
            ).all()
        page = [message_json(m) for m in rows]
        return {"messages": page, "next_after": page[-1]["sequence"] if page else None}

    return app


def app_from_env() -> FastAPI:
    return create_app(os.environ.get("REVSTORE_URL", "sqlite:///chat.db"))


if __name__ == "__main__":
    create_schema(sys.argv[1] if len(sys.argv) > 1 else "sqlite:///chat.db")
