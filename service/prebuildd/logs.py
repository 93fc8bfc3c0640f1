"""Logging: stdlib `logging` with one handler on the root logger, JSON lines (for machines) or
plain text (for people).

Both formatters pass every message and traceback through `redact_dsn` (no password is ever
logged) and add the current span's trace and span ids, so a log line leads to its trace.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

from opentelemetry import trace

from prebuildd.config import redact_dsn

# Attributes every LogRecord has; anything else on a record came from `extra=` and is logged.
_RECORD_FIELDS = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys()
    | {"message", "asctime", "taskName"}
)
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


def _timestamp(record: logging.LogRecord) -> str:
    stamp = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _RECORD_FIELDS}


def _trace_ids() -> dict[str, str]:
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {
        "trace_id": trace.format_trace_id(context.trace_id),
        "span_id": trace.format_span_id(context.span_id),
    }


def _exception_text(record: logging.LogRecord) -> str | None:
    if record.exc_info and record.exc_info[0] is not None:
        return "".join(traceback.format_exception(*record.exc_info)).rstrip()
    return None


def _redact_value(value: Any) -> Any:
    """Redact strings anywhere in a JSON-able value; other objects become redacted strings."""
    if isinstance(value, str):
        return redact_dsn(value)
    if isinstance(value, bool | int | float) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(v) for v in value]
    return redact_dsn(str(value))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, extras, trace_id/span_id, exc."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(_extras(record))
        entry.update(_trace_ids())
        exc_text = _exception_text(record)
        if exc_text:
            entry["exc"] = exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        # Redact values, not the serialised line: a replacement inside JSON escapes could
        # corrupt the line.
        return json.dumps(_redact_value(entry), ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`<ts> <LEVEL> <logger>: <msg> key=value ...`, then the traceback, for terminals."""

    def format(self, record: logging.LogRecord) -> str:
        fields = {**_extras(record), **_trace_ids()}
        line = f"{_timestamp(record)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if fields:
            line += " " + " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())
        exc_text = _exception_text(record)
        if exc_text:
            line += "\n" + exc_text
        if record.stack_info:
            line += "\n" + record.stack_info
        return redact_dsn(line)


def _text_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return json.dumps(text) if (" " in text or not text) else text


class _ServiceHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler `setup_logging` installed, so a second call replaces it.

    Without an explicit stream it writes to whatever `sys.stderr` is at emit time (as
    logging's last-resort handler does), so records logged at interpreter exit (e.g. by the
    embedded server's atexit hook) never hit a stream that was swapped out and closed.
    """

    def __init__(self, stream: TextIO | None) -> None:
        super().__init__(stream if stream is not None else sys.stderr)
        self._follow_stderr = stream is None

    def emit(self, record: logging.LogRecord) -> None:
        if self._follow_stderr:
            self.stream = sys.stderr
        super().emit(record)


def setup_logging(
    level: str, fmt: Literal["json", "text"], *, stream: TextIO | None = None
) -> None:
    """Send every log record to `stream` (default stderr) as JSON lines or text. Idempotent."""
    try:
        numeric = _LEVELS[level.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r} (use {', '.join(_LEVELS)})") from None
    if fmt not in ("json", "text"):
        raise ValueError(f"unknown log format {fmt!r} (use json or text)")
    handler = _ServiceHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _ServiceHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
