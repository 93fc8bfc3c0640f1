"""A loopback TCP proxy to the test server that a test can freeze: the sockets stay open and
nothing passes, in either direction -- a dropped NAT entry, a hung server, a cable pulled
between two routers. Works in front of any server the harness uses (Unix socket or TCP),
so a test of the liveness probe never needs to signal the server's processes.

    async with FreezableProxy.running(db_url) as proxy:
        listener = Listener(proxy.url, ...)     # connects through the proxy
        ...
        proxy.freeze()                          # every connection open now goes silent
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import anyio
import anyio.abc
from psycopg.conninfo import conninfo_to_dict, make_conninfo

ByteStream = anyio.abc.ByteStream


@dataclass
class _Link:
    """One proxied connection; frozen links hold whatever they receive."""

    frozen: bool = False
    thawed: anyio.Event = field(default_factory=anyio.Event)

    async def wait_until_flowing(self) -> None:
        while self.frozen:
            await self.thawed.wait()


class FreezableProxy:
    def __init__(self, upstream_url: str, listener: anyio.abc.SocketListener) -> None:
        self.upstream_url = upstream_url
        self._listener = listener
        self.links: list[_Link] = []
        params = conninfo_to_dict(upstream_url)
        self._host = str(params.get("host") or "localhost")
        self._port = int(params.get("port") or 5432)

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, upstream_url: str) -> AsyncIterator[FreezableProxy]:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        proxy = cls(upstream_url, listener)
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, proxy._handle, tg)
            try:
                yield proxy
            finally:
                tg.cancel_scope.cancel()

    @property
    def port(self) -> int:
        port: int = self._listener.extra(anyio.abc.SocketAttribute.local_port)
        return port

    @property
    def url(self) -> str:
        """The upstream URL (same database, user, password), through the proxy."""
        params = conninfo_to_dict(self.upstream_url)
        params.pop("hostaddr", None)
        params.update(host="127.0.0.1", port=str(self.port))
        return make_conninfo("", **params)  # type: ignore[arg-type]

    def freeze(self) -> int:
        """Stop forwarding on every connection open now; returns how many that is."""
        for link in self.links:
            link.frozen = True
        return len(self.links)

    def thaw(self) -> None:
        for link in self.links:
            link.frozen = False
            link.thawed.set()
            link.thawed = anyio.Event()

    async def _connect_upstream(self) -> ByteStream:
        if self._host.startswith("/"):
            return await anyio.connect_unix(f"{self._host}/.s.PGSQL.{self._port}")
        return await anyio.connect_tcp(self._host, self._port)

    async def _handle(self, client: anyio.abc.SocketStream) -> None:
        link = _Link()
        self.links.append(link)
        async with (
            client,
            await self._connect_upstream() as upstream,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(self._pump, client, upstream, link, tg.cancel_scope)
            tg.start_soon(self._pump, upstream, client, link, tg.cancel_scope)

    @staticmethod
    async def _pump(
        source: ByteStream, sink: ByteStream, link: _Link, scope: anyio.CancelScope
    ) -> None:
        try:
            async for chunk in source:
                await link.wait_until_flowing()
                await sink.send(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        # One side is gone: end the other direction too (both sockets close).
        scope.cancel()

