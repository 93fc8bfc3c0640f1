"""A tiny HTTP server for `/metrics`, `/healthz` and `/readyz`.

Why a stdlib `ThreadingHTTPServer` in a daemon thread rather than an anyio server: the three
endpoints do no I/O of their own (rendering the registry and reading two flags), so threads
cost nothing, and a server outside the event loop keeps answering `/healthz` and `/metrics`
even when the loop is busy or stuck, which is exactly when an operator looks at them. It
needs no dependency and no ASGI stack.

Contract for the readiness callback: it runs on a server thread, so it must be cheap and
thread-safe. It returns a `Readiness` snapshot the service maintains (prebuildd.collector);
it must never query the database itself.

`/readyz` answers 200 when the replica does its job and 503 when it does not, with a JSON body
naming every check and, for each one that is not "ok", why (one line, no connection string,
no row values):

    {"ready": false, "database": "ok", "listener": "ok", "sweep": "failing",
     "reconciles": "ok", "event_triggers": "ok",
     "why": {"sweep": "4 sweeps in a row failed; the last: InsufficientPrivilege (42501): ..."}}

Ready needs the database reachable, the LISTEN connection up, and the reconcile path working:
neither sweeps nor reconciles failing repeatedly. `event_triggers` is reported but does not
gate readiness: a missing trigger delays changes of one kind until the periodic sweep, which
still keeps every pool right; every replica sees the same database, so making all of them
unready would take the whole Deployment out (and stall its rollouts) without fixing anything.
It is a database-level fault that `prebuildd migrate` repairs: the metric
`prebuildd_event_triggers_ok` and its alert call for that.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST

from prebuildd.metrics import Metrics

log = logging.getLogger(__name__)

# A slow or idle client must not pin a server thread forever.
_REQUEST_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class Readiness:
    """What `/readyz` reports (module docstring); built by the collector on the event loop,
    read whole by the server's threads."""

    db_ok: bool
    listener_ok: bool
    # Why the reconcile path is failing (None: it is not): sweeps, reconciles.
    sweep_failing: str | None = None
    reconciles_failing: str | None = None
    # Why the database is unreachable, when known.
    db_why: str | None = None
    # The event triggers at the last check: "ok", "missing" (with why), or "unknown" (not
    # checked yet, or the check failed). Reported; never gates readiness.
    event_triggers: str = "unknown"
    event_triggers_why: str | None = None

    @property
    def ready(self) -> bool:
        return (
            self.db_ok
            and self.listener_ok
            and self.sweep_failing is None
            and self.reconciles_failing is None
        )

    def body(self) -> dict[str, object]:
        """The JSON object of `/readyz`."""
        checks = {
            "database": "ok" if self.db_ok else "down",
            "listener": "ok" if self.listener_ok else "down",
            "sweep": "ok" if self.sweep_failing is None else "failing",
            "reconciles": "ok" if self.reconciles_failing is None else "failing",
            "event_triggers": self.event_triggers,
        }
        why = {
            "database": None if self.db_ok else self.db_why or "no answer to the health probe",
            "listener": None
            if self.listener_ok
            else "the LISTEN connection is down; reconnecting (see the event listener's log)",
            "sweep": self.sweep_failing,
            "reconciles": self.reconciles_failing,
            "event_triggers": self.event_triggers_why,
        }
        body: dict[str, object] = {"ready": self.ready, **checks}
        reasons = {name: text for name, text in why.items() if text}
        if reasons:
            body["why"] = reasons
        return body


ReadinessCallback = Callable[[], Readiness]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Restarting the service must not fail on a socket left in TIME_WAIT.
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], metrics: Metrics, readiness: ReadinessCallback
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        self.metrics = metrics
        self.readiness = readiness

    def handle_error(self, request: object, client_address: object) -> None:
        # The default prints a traceback to stderr, bypassing the JSON logs; a client that
        # hangs up mid-response is routine and not worth a traceback.
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError | TimeoutError):
            log.debug("HTTP client went away: %s", error)
        else:
            log.exception("HTTP request failed")


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = _REQUEST_TIMEOUT_SECONDS
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._metrics()
        elif path == "/healthz":
            self._send(HTTPStatus.OK, b"ok\n", "text/plain; charset=utf-8")
        elif path == "/readyz":
            self._readyz()
        else:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")

    def _metrics(self) -> None:
        try:
            body = self.server.metrics.render()
        except Exception:
            log.exception("rendering metrics failed")
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, b"error\n", "text/plain; charset=utf-8")
            return
        self._send(HTTPStatus.OK, body, CONTENT_TYPE_LATEST)

    def _readyz(self) -> None:
        try:
            state = self.server.readiness()
            ready, body = state.ready, state.body()
        except Exception:
            # A broken callback means we cannot vouch for readiness: report not ready.
            log.exception("readiness callback failed")
            ready, body = False, {"ready": False, "why": {"readiness": "internal error"}}
        status = HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE
        self._send(status, json.dumps(body).encode() + b"\n", "application/json")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        # Scrapes every few seconds would flood the logs at the default (stderr) level.
        log.debug("%s " + format, self.address_string(), *args)


@dataclass(slots=True)
class HttpServerHandle:
    """A running server: the bound `port` (useful with port 0) and `close()`."""

    host: str
    port: int
    _server: _Server
    _thread: threading.Thread

    def close(self) -> None:
        """Stop accepting, wait for the serving loop to end, release the socket. Idempotent."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()


def parse_addr(addr: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `:port` (all interfaces); port 0 picks a free port."""
    host, sep, port = addr.strip().rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"invalid listen address {addr!r} (use host:port, e.g. 127.0.0.1:2118)")
    return host.strip("[]"), int(port)


def start_http_server(
    addr: str, metrics: Metrics, readiness: ReadinessCallback
) -> HttpServerHandle:
    """Bind now (errors surface to the caller) and serve in a daemon thread."""
    host, port = parse_addr(addr)
    server = _Server((host, port), metrics, readiness)
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.2},
        name="prebuildd-http",
        daemon=True,
    )
    thread.start()
    bound_port = server.server_address[1]
    log.info("serving /metrics, /healthz, /readyz", extra={"addr": f"{host}:{bound_port}"})
    return HttpServerHandle(host=host, port=bound_port, _server=server, _thread=thread)
