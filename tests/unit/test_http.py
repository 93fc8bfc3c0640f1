"""/metrics, /healthz and /readyz over real HTTP on an ephemeral port."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from prebuildd.http import HttpServerHandle, Readiness, parse_addr, start_http_server
from prebuildd.metrics import Metrics


class Flags:
    """Stands in for the service's readiness flags."""

    def __init__(self) -> None:
        self.state = Readiness(db_ok=False, listener_ok=False)

    def __call__(self) -> Readiness:
        return self.state


@pytest.fixture
def flags() -> Flags:
    return Flags()


@pytest.fixture
def server(flags: Flags) -> Iterator[HttpServerHandle]:
    metrics = Metrics()
    metrics.queue_depth.set(4)
    handle = start_http_server("127.0.0.1:0", metrics, flags)
    yield handle
    handle.close()


def get(handle: HttpServerHandle, path: str) -> tuple[int, str, str]:
    """Status, content type and body; HTTP errors are answers here, not exceptions."""
    url = f"http://127.0.0.1:{handle.port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def test_metrics_endpoint_serves_prometheus_text(server: HttpServerHandle) -> None:
    status, content_type, body = get(server, "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain")
    assert "prebuildd_queue_depth 4.0" in body


def test_healthz_is_ok_while_running(server: HttpServerHandle) -> None:
    assert get(server, "/healthz")[0] == 200


HEALTHY = {
    "ready": True,
    "database": "ok",
    "listener": "ok",
    "sweep": "ok",
    "reconciles": "ok",
    "event_triggers": "ok",
}


def test_readyz_follows_the_callback(server: HttpServerHandle, flags: Flags) -> None:
    status, _, body = get(server, "/readyz")
    assert status == 503
    assert json.loads(body) == {
        "ready": False,
        "database": "down",
        "listener": "down",
        "sweep": "ok",
        "reconciles": "ok",
        "event_triggers": "unknown",
        "why": {
            "database": "no answer to the health probe",
            "listener": "the LISTEN connection is down; reconnecting (see the event listener's "
            "log)",
        },
    }

    flags.state = Readiness(db_ok=True, listener_ok=False)
    status, _, body = get(server, "/readyz")
    assert status == 503
    assert json.loads(body)["listener"] == "down" and json.loads(body)["database"] == "ok"

    flags.state = Readiness(db_ok=True, listener_ok=True, event_triggers="ok")
    status, content_type, body = get(server, "/readyz")
    assert status == 200 and content_type == "application/json"
    assert json.loads(body) == HEALTHY


def test_readyz_reports_a_failing_reconcile_path_and_why(
    server: HttpServerHandle, flags: Flags
) -> None:
    """Issue 10 item 7: not only a dead connection makes a replica unready."""
    why = "3 sweeps in a row failed; the last: InsufficientPrivilege (42501): permission denied"
    flags.state = Readiness(db_ok=True, listener_ok=True, sweep_failing=why, event_triggers="ok")
    status, _, body = get(server, "/readyz")
    assert status == 503
    expected = {**HEALTHY, "ready": False, "sweep": "failing", "why": {"sweep": why}}
    assert json.loads(body) == expected

    why = "5 reconciles in a row failed; the last: QueryCanceled (57014): statement timeout"
    flags.state = Readiness(
        db_ok=True, listener_ok=True, reconciles_failing=why, event_triggers="ok"
    )
    status, _, body = get(server, "/readyz")
    assert status == 503
    assert json.loads(body)["reconciles"] == "failing"
    assert json.loads(body)["why"] == {"reconciles": why}


def test_readyz_stays_200_when_only_event_triggers_are_missing(
    server: HttpServerHandle, flags: Flags
) -> None:
    """Missing triggers delay one kind of change until the sweep; the replica still does its
    job, and every replica sees the same database: reported, not gating (prebuildd.http)."""
    why = "1 of 16 triggers do not fire (missing prebuildd_claimed on workspaces): ..."
    flags.state = Readiness(
        db_ok=True, listener_ok=True, event_triggers="missing", event_triggers_why=why
    )
    status, _, body = get(server, "/readyz")
    assert status == 200
    expected = {**HEALTHY, "event_triggers": "missing", "why": {"event_triggers": why}}
    assert json.loads(body) == expected


def test_readyz_is_503_when_the_callback_raises(server: HttpServerHandle, flags: Flags) -> None:
    def broken() -> Readiness:
        raise RuntimeError("flag store gone")

    server._server.readiness = broken
    assert get(server, "/readyz")[0] == 503


def test_unknown_path_is_404(server: HttpServerHandle) -> None:
    assert get(server, "/nope")[0] == 404


def test_close_releases_the_port(flags: Flags) -> None:
    handle = start_http_server("127.0.0.1:0", Metrics(), flags)
    port = handle.port
    assert get(handle, "/healthz")[0] == 200
    handle.close()
    handle.close()  # idempotent
    # Nobody answers on the port any more...
    with pytest.raises(urllib.error.URLError) as refused:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
    assert isinstance(refused.value.reason, ConnectionRefusedError)
    # ...and it can be bound again at once, by a server that answers.
    again = start_http_server(f"127.0.0.1:{port}", Metrics(), flags)
    try:
        assert again.port == port
        assert get(again, "/healthz")[0] == 200
    finally:
        again.close()


@pytest.mark.parametrize(
    ("addr", "expected"),
    [("127.0.0.1:2118", ("127.0.0.1", 2118)), (":9090", ("", 9090)), ("[::1]:0", ("::1", 0))],
)
def test_parse_addr(addr: str, expected: tuple[str, int]) -> None:
    assert parse_addr(addr) == expected


@pytest.mark.parametrize("addr", ["localhost", "host:port", "h:70000", ""])
def test_parse_addr_rejects_garbage(addr: str) -> None:
    with pytest.raises(ValueError, match="listen address"):
        parse_addr(addr)


def test_metrics_failure_is_a_500_not_a_dropped_connection(
    server: HttpServerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> bytes:
        raise RuntimeError("collector bug")

    monkeypatch.setattr(server._server.metrics, "render", broken)
    assert get(server, "/metrics")[0] == 500
    assert get(server, "/healthz")[0] == 200
