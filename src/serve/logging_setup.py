"""JSON logs (python-json-logger), one object per line, each with the current request id and,
when the request is traced, its trace id (``src.monitoring.tracing``).

One record is one line in either format, whatever a client sends: JSON escapes control
characters itself, and the text format escapes them (``\\n``, ``\\x1b``, ...) in every field, so
a path such as ``/x%0A2024-01-01 ... INFO forged`` cannot start a line of its own. Tracebacks,
the only multi-line part, are indented under their record.
"""

from __future__ import annotations

import logging
import logging.config
import re
from typing import Any

from src.core.context import current_request_id
from src.monitoring.tracing import current_trace_id

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s [%(request_id)s %(trace_id)s] %(message)s"
JSON_FIELDS = (
    "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s %(trace_id)s %(threadName)s"
)


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` and ``trace_id`` to every record (None outside a request, and
    ``trace_id`` None while tracing is off)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.__dict__.pop("color_message", None)  # uvicorn's ANSI-coloured duplicate
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id()
        if not hasattr(record, "trace_id"):
            record.trace_id = current_trace_id()
        return True


# C0 and C1 control characters, DEL, and the Unicode line and paragraph separators.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_TRACEBACK_INDENT = "    "


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED_ESCAPES.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape_control(text: str) -> str:
    """``text`` with every control character written as a visible escape."""
    return _UNSAFE.sub(_escape_char, text)


def _indented(text: str) -> str:
    return "\n".join(_TRACEBACK_INDENT + escape_control(line) for line in text.split("\n"))


class SafeTextFormatter(logging.Formatter):
    """The text format with every field's control characters escaped: one record, one line
    (plus an indented traceback). The record itself is left as it was."""

    def format(self, record: logging.LogRecord) -> str:
        safe = logging.makeLogRecord(record.__dict__)
        safe.msg = record.getMessage()
        safe.args = None
        safe.exc_text = None  # rendered again below, through formatException
        if getattr(safe, "trace_id", None) is None:
            safe.trace_id = "-"  # not traced
        for key, value in list(vars(safe).items()):
            if isinstance(value, str) and key != "stack_info":
                setattr(safe, key, escape_control(value))
        return super().format(safe)

    def formatException(self, ei: Any) -> str:
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indented(super().formatStack(stack_info))


def logging_dict(level: str = "INFO", fmt: str = "json") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` dict; uvicorn's loggers go through the same handler."""
    formatter: dict[str, Any]
    if fmt == "json":
        formatter = {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": JSON_FIELDS,
            "rename_fields": {
                "asctime": "time",
                "levelname": "level",
                "name": "logger",
                "threadName": "thread",
            },
            "datefmt": "%Y-%m-%dT%H:%M:%S%z",
        }
    else:
        formatter = {"()": SafeTextFormatter, "fmt": TEXT_FORMAT}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {"default": formatter},
        "handlers": {
            "stdout": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stdout",
                "formatter": "default",
                "filters": ["request_id"],
            }
        },
        "root": {"level": level, "handlers": ["stdout"]},
        "loggers": {
            # uvicorn's own lines go through the root handler; its access log is replaced by ours.
            "uvicorn": {"level": level, "handlers": [], "propagate": True},
            "uvicorn.error": {"level": level, "handlers": [], "propagate": True},
            "uvicorn.access": {"level": "WARNING", "handlers": [], "propagate": False},
        },
    }


def setup_logging(level: str = "INFO", fmt: str = "json") -> None:
    logging.config.dictConfig(logging_dict(level, fmt))
