"""Structured JSON logs: one object per line, with the task ARN and SQS message id on each.

The task context lives in context variables, so every line written while a message is handled
carries it without threading it through every call (and concurrent threads in tests keep their
own). Never pass a secret to these functions: fields are written as given.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

_task_arn: ContextVar[str | None] = ContextVar("task_arn", default=None)
_message_id: ContextVar[str | None] = ContextVar("message_id", default=None)

_LOGGER = logging.getLogger("registrar")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "message": record.getMessage(),
            "task_arn": _task_arn.get(),
            "message_id": _message_id.get(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            doc.update(fields)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, separators=(",", ":"))


class _StdoutHandler(logging.Handler):
    """Writes to the current sys.stdout (Lambda ships stdout to CloudWatch Logs)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stdout.write(self.format(record) + "\n")
            sys.stdout.flush()
        except Exception:  # logging must never break message handling
            self.handleError(record)


def _configure() -> None:
    if _LOGGER.handlers:
        return
    handler = _StdoutHandler()
    handler.setFormatter(JsonFormatter())
    _LOGGER.addHandler(handler)
    _LOGGER.propagate = False  # the Lambda runtime's root handler would print it twice
    _LOGGER.setLevel(os.environ.get("LOG_LEVEL", "INFO").upper())


@contextmanager
def task_context(task_arn: str | None = None, message_id: str | None = None) -> Iterator[None]:
    """Tag every line logged inside with this task ARN and message id."""
    arn_token = _task_arn.set(task_arn)
    msg_token = _message_id.set(message_id if message_id is not None else _message_id.get())
    try:
        yield
    finally:
        _task_arn.reset(arn_token)
        _message_id.reset(msg_token)


def set_task_arn(task_arn: str | None) -> None:
    """Name the task once it is known (after the body parsed) for the rest of the context."""
    _task_arn.set(task_arn)


def _log(level: int, message: str, fields: dict[str, Any], exc_info: bool = False) -> None:
    _configure()
    _LOGGER.log(level, message, extra={"fields": fields}, exc_info=exc_info)


def debug(message: str, **fields: Any) -> None:
    _log(logging.DEBUG, message, fields)


def info(message: str, **fields: Any) -> None:
    _log(logging.INFO, message, fields)


def warning(message: str, **fields: Any) -> None:
    _log(logging.WARNING, message, fields)


def error(message: str, *, exc_info: bool = False, **fields: Any) -> None:
    _log(logging.ERROR, message, fields, exc_info)
