"""Structured logs: one JSON object per line.

Record extras (``extra={...}``) become fields, so revstore's retry logger (event, op,
key, attempt, db_code, constraint) is picked up as is; the fields of the request being
served (request id, method, route, record or stream id) are added from a context
variable, which every await of the request's task (the store's retries included) sees.
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

request_context: ContextVar[dict[str, Any] | None] = ContextVar(
    "revstore_request_context", default=None
)

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "color_message", "taskName"}
)


# One encoder for every line: ``json.dumps`` with options builds a new one per call.
_ENCODER = json.JSONEncoder(default=str, ensure_ascii=False)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        ctx = request_context.get()
        if ctx:
            for key, value in ctx.items():
                out.setdefault(key, value)
        if record.exc_info:
            out["stack"] = self.formatException(record.exc_info)
        return _ENCODER.encode(out)


def log_config(level: str = "info") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for uvicorn (applied in every worker process):
    JSON lines on stderr for revstore and uvicorn alike."""
    lvl = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "revstore.service.logs.JsonFormatter"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
                "level": lvl,
            }
        },
        "loggers": {
            "revstore": {"handlers": ["stderr"], "level": lvl, "propagate": False},
            # The retry metrics count INFO records of this logger; the handler level above
            # still decides what is printed.
            "revstore.retry": {"level": "INFO"},
            "uvicorn": {"handlers": ["stderr"], "level": lvl, "propagate": False},
            "uvicorn.error": {"level": lvl},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        },
    }
