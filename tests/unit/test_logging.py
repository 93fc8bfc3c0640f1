"""Log formatting: JSON lines with trace ids, text lines, and no DSN password anywhere."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from prebuildd import logs, telemetry

DSN = "postgresql://u:secret@h/db"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """Route logging to a buffer; restore the root logger afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    buffer = io.StringIO()
    yield buffer
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    memory = InMemorySpanExporter()
    handle = telemetry.setup_tracing(
        service_version="test", extra_processor=SimpleSpanProcessor(memory)
    )
    yield memory
    handle.shutdown()


def lines(buffer: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_json_line_has_fields_and_extras(stream: io.StringIO) -> None:
    logs.setup_logging("info", "json", stream=stream)
    logging.getLogger("prebuildd.test").info(
        "reconciled %s", "go", extra={"template_id": "t1", "actions": {"create": 2}}
    )
    logging.getLogger("prebuildd.test").debug("below the level")
    [entry] = lines(stream)
    assert entry["level"] == "info"
    assert entry["logger"] == "prebuildd.test"
    assert entry["msg"] == "reconciled go"
    assert entry["template_id"] == "t1"
    assert entry["actions"] == {"create": 2}
    assert str(entry["ts"]).endswith("Z")
    assert "trace_id" not in entry


def test_json_line_carries_the_current_trace_id(
    stream: io.StringIO, exporter: InMemorySpanExporter
) -> None:
    logs.setup_logging("debug", "json", stream=stream)
    with telemetry.span("reconcile") as current:
        logging.getLogger("prebuildd.test").info("inside")
    context = current.get_span_context()
    [entry] = lines(stream)
    assert entry["trace_id"] == f"{context.trace_id:032x}"
    assert entry["span_id"] == f"{context.span_id:016x}"
    assert [s.name for s in exporter.get_finished_spans()] == ["reconcile"]


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_dsn_password_never_appears(stream: io.StringIO, fmt: str) -> None:
    logs.setup_logging("info", fmt, stream=stream)  # type: ignore[arg-type]
    log = logging.getLogger("prebuildd.test")
    log.info("connecting to %s", DSN, extra={"database_url": DSN, "urls": [DSN]})
    try:
        raise ConnectionError(f"connection to {DSN} failed; conninfo password=secret")
    except ConnectionError:
        log.exception("could not connect")
    output = stream.getvalue()
    assert "secret" not in output
    assert "connection to postgresql://u:***@h/db failed" in output
    if fmt == "json":
        assert len(lines(stream)) == 2  # still valid JSON after redaction


def test_text_format_is_readable(stream: io.StringIO) -> None:
    logs.setup_logging("INFO", "text", stream=stream)
    logging.getLogger("prebuildd.test").warning(
        "slow", extra={"duration_ms": 12, "trigger": "event"}
    )
    line = stream.getvalue().strip()
    assert " WARNING prebuildd.test: slow " in line
    assert "duration_ms=12" in line and "trigger=event" in line


def test_setup_logging_replaces_its_own_handler(stream: io.StringIO) -> None:
    logs.setup_logging("info", "json", stream=io.StringIO())
    logs.setup_logging("info", "json", stream=stream)
    logging.getLogger("prebuildd.test").info("once")
    assert len(lines(stream)) == 1


def test_unknown_level_is_rejected() -> None:
    with pytest.raises(ValueError, match="log level"):
        logs.setup_logging("loud", "json")


def test_span_records_exceptions_without_the_password(exporter: InMemorySpanExporter) -> None:
    with pytest.raises(RuntimeError), telemetry.span("boom"):
        raise RuntimeError(f"lost {DSN}")
    [finished] = exporter.get_finished_spans()
    assert finished.status.description is not None
    assert "secret" not in finished.status.description
    for event in finished.events:
        assert "secret" not in json.dumps(dict(event.attributes or {}))
    assert finished.attributes is not None and finished.attributes["error.type"] == "RuntimeError"


def test_db_span_follows_semantic_conventions(exporter: InMemorySpanExporter) -> None:
    telemetry.set_db_namespace("coder")
    try:
        with telemetry.span("reconcile"), telemetry.db_span("read_presets", "SELECT"):
            pass
    finally:
        telemetry.set_db_namespace(None)
    db, root = exporter.get_finished_spans()
    assert db.name == "SELECT prebuildd.read_presets"
    assert db.kind.name == "CLIENT"
    assert db.parent is not None and db.parent.span_id == root.context.span_id
    assert dict(db.attributes or {}) == {
        "db.system.name": "postgresql",
        "db.operation.name": "SELECT",
        "db.query.summary": "SELECT prebuildd.read_presets",
        "db.namespace": "coder",
    }


def test_import_time_global_tracers_follow_every_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    """Modules may do `trace.get_tracer(__name__)` at import time, before any setup."""
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    early = trace.get_tracer("prebuildd.some_module")
    for round_ in range(2):
        memory = InMemorySpanExporter()
        handle = telemetry.setup_tracing(
            service_version="test", extra_processor=SimpleSpanProcessor(memory)
        )
        with early.start_as_current_span(f"round {round_}"):
            pass
        handle.shutdown()
        assert [s.name for s in memory.get_finished_spans()] == [f"round {round_}"]
    with early.start_as_current_span("after shutdown") as current:
        assert not current.get_span_context().is_valid
