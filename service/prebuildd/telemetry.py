"""Tracing setup, and the helpers other modules use to emit spans (logging: prebuildd.logs).

Tracing follows the standard `OTEL_*` variables, with two deliberate choices:

* The exporter is OTLP over http/protobuf, built here directly. (The SDK's auto-configuration
  would pick gRPC, which needs a heavier stack and a different port than Jaeger's :4318.)
* Export happens only when an endpoint is configured (`OTEL_EXPORTER_OTLP_ENDPOINT` or
  `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) and `OTEL_TRACES_EXPORTER` is not `none`. Otherwise
  spans are still created (logs carry their ids) but go nowhere, silently: no exporter
  retrying against localhost:4318 and logging connection errors forever.

The global tracer provider can be set only once per process, while tests set tracing up many
times; so the global one installed here is a thin delegate to the SDK provider of the latest
`setup_tracing`. `telemetry.tracer()` and `opentelemetry.trace.get_tracer(...)` both work,
before or after setup, and follow every re-setup.

Spans must not leak DSN passwords through exception messages, so `span()` and `db_span()`
record exceptions themselves, after `redact_dsn`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import (
    SERVICE_NAME,
    SERVICE_VERSION,
    OTELResourceDetector,
    Resource,
)
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from prebuildd import __version__
from prebuildd.config import redact_dsn

DEFAULT_SERVICE_NAME = "prebuildd"
INSTRUMENTATION_NAME = "prebuildd"
_SUPPORTED_PROTOCOL = "http/protobuf"
# Bound the flush on shutdown: an unreachable collector must not hold the process up.
_SHUTDOWN_FLUSH_SECONDS = 3.0

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Tracing
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _State:
    provider: TracerProvider | None = None
    db_namespace: str | None = None
    global_installed: bool = False


_state = _State()
_NO_OP = trace.NoOpTracer()


class _CurrentTracer(trace.Tracer):
    """Delegates each span to the provider of the latest `setup_tracing` (no-op before/after).

    Module-level tracers (`trace.get_tracer(__name__)` at import time) end up here through the
    global provider, so they follow every re-setup instead of sticking to the first one.
    """

    def __init__(self, name: str, version: str | None) -> None:
        self._name, self._version = name, version
        self._for: TracerProvider | None = None
        self._tracer: trace.Tracer = _NO_OP

    def _current(self) -> trace.Tracer:
        provider = _state.provider
        if provider is None:
            return _NO_OP
        if provider is not self._for:
            self._for, self._tracer = provider, provider.get_tracer(self._name, self._version)
        return self._tracer

    def start_span(self, *args: Any, **kwargs: Any) -> trace.Span:
        return self._current().start_span(*args, **kwargs)

    # The API's return type is a private class; a contextlib manager behaves the same (also as a
    # decorator, where it resolves the provider on every call, as it should).
    @contextlib.contextmanager
    def start_as_current_span(  # type: ignore[override]
        self, *args: Any, **kwargs: Any
    ) -> Iterator[trace.Span]:
        with self._current().start_as_current_span(*args, **kwargs) as current:
            yield current


class _CurrentProvider(trace.TracerProvider):
    """The global provider: hands out `_CurrentTracer`s."""

    def get_tracer(self, instrumenting_module_name: str, *args: Any, **kwargs: Any) -> trace.Tracer:
        version = args[0] if args else kwargs.get("instrumenting_library_version")
        return _CurrentTracer(instrumenting_module_name, version)


_TRACER = _CurrentTracer(INSTRUMENTATION_NAME, __version__)


@dataclass(slots=True)
class TracingHandle:
    """What `setup_tracing` returns: the tracer, whether spans leave the process, shutdown."""

    tracer: trace.Tracer
    provider: TracerProvider
    exporter: SpanExporter | None
    _closed: bool = False

    @property
    def exporting(self) -> bool:
        """True when spans leave the process (an OTLP endpoint is configured)."""
        return self.exporter is not None

    def shutdown(self) -> None:
        """Flush queued spans and stop; afterwards `tracer()` is a no-op again. Idempotent."""
        if self._closed:
            return
        self._closed = True
        # The SDK's force_flush ignores its timeout and an unreachable collector makes the
        # exporter retry for its whole export timeout; so flush on a helper thread, and when it
        # takes too long stop the exporter, which aborts its retry loop.
        flusher = threading.Thread(
            target=self.provider.force_flush, name="prebuildd-trace-flush", daemon=True
        )
        flusher.start()
        flusher.join(_SHUTDOWN_FLUSH_SECONDS)
        if flusher.is_alive() and self.exporter is not None:
            self.exporter.shutdown()
        self.provider.shutdown()
        if _state.provider is self.provider:
            _state.provider = None


def setup_tracing(
    *, service_version: str, extra_processor: SpanProcessor | None = None
) -> TracingHandle:
    """Build the tracer provider from the environment and make it the one `tracer()` returns.

    `extra_processor` is added next to the exporter's (tests pass a SimpleSpanProcessor over an
    InMemorySpanExporter). Calling this again replaces the previous setup; shut that down first.
    """
    env = os.environ
    provider = TracerProvider(resource=_resource(service_version))
    exporter = None if _env_flag(env, "OTEL_SDK_DISABLED") else _exporter_from_env(env)
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    if extra_processor is not None:
        provider.add_span_processor(extra_processor)
    _state.provider = provider
    _install_global_once()
    return TracingHandle(tracer=_TRACER, provider=provider, exporter=exporter)


def _install_global_once() -> None:
    # The API lets the global provider be set once per process; ours delegates to whatever
    # setup is current, so setting it once is enough.
    if not _state.global_installed:
        _state.global_installed = True
        trace.set_tracer_provider(_CurrentProvider())


def tracer() -> trace.Tracer:
    """The service's tracer: spans go to the current setup (no-op before it and after shutdown).

    Always the same object, so a module may keep it in a global.
    """
    return _TRACER


def set_db_namespace(database_name: str | None) -> None:
    """Name of the database the service works on, put on every DB span (`db.namespace`)."""
    _state.db_namespace = database_name or None


def _resource(service_version: str) -> Resource:
    # Resource.create() reads OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME, but attributes
    # passed to it win over the environment; so pass our default name only when the
    # environment names no service.
    attributes: dict[str, AttributeValue] = {SERVICE_VERSION: service_version}
    if SERVICE_NAME not in OTELResourceDetector().detect().attributes:
        attributes[SERVICE_NAME] = DEFAULT_SERVICE_NAME
    return Resource.create(attributes)


def _exporter_from_env(env: Mapping[str, str]) -> SpanExporter | None:
    if not (_otlp_selected(env) and _endpoint_configured(env) and _protocol_supported(env)):
        return None
    # Imported late: it pulls in requests and protobuf, which a no-export run does not need.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    # The exporter reads endpoint, headers, timeout, compression and TLS from the same env.
    return OTLPSpanExporter()


def _otlp_selected(env: Mapping[str, str]) -> bool:
    raw = env.get("OTEL_TRACES_EXPORTER", "").strip() or "otlp"
    names = {name.strip().lower() for name in raw.split(",")}
    unsupported = names - {"none", "otlp"}
    if unsupported:
        log.warning("OTEL_TRACES_EXPORTER: %s not supported, only otlp", sorted(unsupported))
    return "otlp" in names and "none" not in names


def _endpoint_configured(env: Mapping[str, str]) -> bool:
    return any(
        env.get(name, "").strip()
        for name in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def _protocol_supported(env: Mapping[str, str]) -> bool:
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or _SUPPORTED_PROTOCOL
    ).strip()
    if protocol != _SUPPORTED_PROTOCOL:
        log.warning(
            "OTLP protocol %r not supported, only %s: not exporting", protocol, _SUPPORTED_PROTOCOL
        )
        return False
    return True


def _env_flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() == "true"


@contextlib.contextmanager
def span(
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, AttributeValue] | None = None,
) -> Iterator[trace.Span]:
    """Start a current span; an escaping exception is recorded (redacted) and re-raised."""
    with tracer().start_as_current_span(
        name,
        kind=kind,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as current:
        try:
            yield current
        except BaseException as exc:
            record_error(current, exc)
            raise


def record_error(target: trace.Span, exc: BaseException) -> None:
    """Mark `target` failed with `exc`, following the exception semantic conventions."""
    message = redact_dsn(str(exc))
    error_type = type(exc).__qualname__
    target.set_attribute("error.type", error_type)
    sqlstate = getattr(exc, "sqlstate", None)  # psycopg errors carry the SQLSTATE
    if isinstance(sqlstate, str):
        target.set_attribute("db.response.status_code", sqlstate)
    target.add_event(
        "exception",
        {
            "exception.type": error_type,
            "exception.message": message,
            "exception.stacktrace": redact_dsn("".join(traceback.format_exception(exc))),
        },
    )
    target.set_status(Status(StatusCode.ERROR, message))


@contextlib.contextmanager
def db_span(name_of_query: str, operation: str) -> Iterator[trace.Span]:
    """A CLIENT span around one named query, after the OTel database conventions.

    Named `"<OPERATION> prebuildd.<query>"` (also its `db.query.summary`): low cardinality and
    recognisable as one of our named queries. Parameter values are never recorded.
    """
    summary = f"{operation} prebuildd.{name_of_query}"
    attributes: dict[str, AttributeValue] = {
        "db.system.name": "postgresql",
        "db.operation.name": operation,
        "db.query.summary": summary,
    }
    if _state.db_namespace:
        attributes["db.namespace"] = _state.db_namespace
    with span(summary, kind=SpanKind.CLIENT, attributes=attributes) as current:
        yield current
