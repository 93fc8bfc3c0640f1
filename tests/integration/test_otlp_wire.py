"""Spans leave the process as OTLP http/protobuf, configured only by the OTEL_* variables.

A tiny collector (tests/_otlp.py: http.server on an ephemeral port) decodes what arrives at
/v1/traces. tests/e2e/test_e2e_paths.py checks the same export from a running `prebuildd run`.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from _otlp import Collector, otlp_receiver
from prebuildd import telemetry

_OTEL_VARS = (
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_SDK_DISABLED",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
)


@pytest.fixture
def collector() -> Iterator[Collector]:
    with otlp_receiver() as server:
        yield server


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _OTEL_VARS:
        monkeypatch.delenv(name, raising=False)


def resource_attributes(request: ExportTraceServiceRequest) -> dict[str, str]:
    [spans] = request.resource_spans
    return {a.key: a.value.string_value for a in spans.resource.attributes}


def span_names(collector: Collector) -> list[str]:
    return [
        s.name
        for request in collector.requests
        for resource_spans in request.resource_spans
        for scope in resource_spans.scope_spans
        for s in scope.spans
    ]


def test_spans_arrive_over_otlp_http_with_default_service_name(
    collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
    handle = telemetry.setup_tracing(service_version="9.9.9")
    assert handle.exporting
    with (
        telemetry.span("reconcile", attributes={"trigger": "event"}),
        telemetry.db_span("read_presets", "SELECT"),
    ):
        pass
    handle.shutdown()

    assert collector.paths and set(collector.paths) == {"/v1/traces"}
    assert set(collector.content_types) == {"application/x-protobuf"}
    assert sorted(span_names(collector)) == ["SELECT prebuildd.read_presets", "reconcile"]
    attributes = resource_attributes(collector.requests[0])
    assert attributes["service.name"] == "prebuildd"
    assert attributes["service.version"] == "9.9.9"


def test_service_name_from_the_environment_wins(
    collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", collector.url + "/v1/traces")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "prebuildd-eu")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
    handle = telemetry.setup_tracing(service_version="1")
    with telemetry.span("one"):
        pass
    handle.shutdown()

    attributes = resource_attributes(collector.requests[0])
    assert attributes["service.name"] == "prebuildd-eu"
    assert attributes["deployment.environment"] == "test"


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "URL"},
        {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": "URL"},
    ],
)
def test_no_export_without_a_usable_exporter(
    collector: Collector,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    env: dict[str, str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value.replace("URL", collector.url))
    with caplog.at_level(logging.WARNING):
        handle = telemetry.setup_tracing(service_version="1")
        with telemetry.span("quiet"):
            pass
        handle.shutdown()
    assert not handle.exporting
    assert collector.requests == []
    # Only a deliberate but unsupported choice (gRPC) deserves one warning; nothing else.
    assert len(caplog.records) == (1 if "OTEL_EXPORTER_OTLP_PROTOCOL" in env else 0)


def test_tracer_is_a_no_op_after_shutdown(monkeypatch: pytest.MonkeyPatch) -> None:
    handle = telemetry.setup_tracing(service_version="1")
    assert telemetry.tracer() is handle.tracer
    handle.shutdown()
    handle.shutdown()  # idempotent
    with telemetry.span("after") as current:
        assert not current.get_span_context().is_valid


def test_shutdown_is_bounded_when_the_collector_is_down(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: connections are refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    # Left to itself the exporter would retry for its whole timeout: make that a minute, so
    # that a shutdown bounded by its own flush limit (seconds) is told apart on any machine.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "60")
    handle = telemetry.setup_tracing(service_version="1")
    with telemetry.span("lost"):
        pass
    started = time.monotonic()
    handle.shutdown()
    assert time.monotonic() - started < 30
