"""A generic asyncio FastAGI server: accepts Asterisk's connections, routes each by script.

The route table is passed in explicitly; nothing registers itself on import. One
session's failure is logged and reported to the channel (``OMNICC_STATUS=ERROR``) and
never touches the other sessions.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

from agi.protocol import (
    AGIError,
    AGIHangup,
    AGIProtocolError,
    AGISession,
    AGITimeout,
    close_writer,
    read_request,
)

# Connections the kernel may queue before accept(); capped by net.core.somaxconn.
LISTEN_BACKLOG = 4096

Handler = Callable[[AGISession], Awaitable[None]]


def _peer_name(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


def _printable(text: str, limit: int = 100) -> str:
    """Peer-supplied text made safe to echo back as an AGI argument (no line breaks)."""
    return "".join(ch if ch.isprintable() else "?" for ch in text[:limit])


class FastAGIServer:
    """Serves FastAGI sessions, calling ``routes[request.script](session)`` for each."""

    def __init__(
        self,
        routes: Mapping[str, Handler],
        *,
        host: str,
        port: int,
        header_timeout: float = 5.0,
        command_timeout: float = 10.0,
        logger: logging.Logger | None = None,
    ) -> None:
        self._routes = dict(routes)
        self._host = host
        self._port = port
        self._header_timeout = header_timeout
        self._command_timeout = command_timeout
        self._log = logger or logging.getLogger(__name__)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[object]] = set()
        self._closing = False
        # Every finished connection counts in exactly one of these (not those cut by close()).
        self.sessions_served = 0
        self.sessions_failed = 0

    @property
    def active_sessions(self) -> int:
        return len(self._tasks)

    @property
    def port(self) -> int:
        """The bound port (useful after binding port 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("FastAGI server is not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("FastAGI server already started")
        # asyncio's default backlog (100) drops connections in a burst of calls, and
        # Asterisk gives a FastAGI connect only 2 s: queue as many as the kernel allows.
        self._server = await asyncio.start_server(self._on_connect, self._host, self._port,
                                                  backlog=LISTEN_BACKLOG)
        self._log.info(
            "FastAGI listening on %s:%d, scripts: %s",
            self._host,
            self.port,
            ", ".join(sorted(self._routes)) or "(none)",
        )

    async def serve_forever(self) -> None:
        if self._server is None:
            await self.start()
        assert self._server is not None
        await self._server.serve_forever()

    async def close(self) -> None:
        """Stop accepting, cancel the sessions in flight and wait until they are gone."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        while True:
            # A connection accepted just before close() registers on its first step.
            await asyncio.sleep(0)
            tasks = set(self._tasks)
            if not tasks:
                break
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
        if self._server is not None:
            await self._server.wait_closed()

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        session: AGISession | None = None
        peer = _peer_name(writer)
        try:
            if self._closing:
                return
            try:
                request = await read_request(reader, timeout=self._header_timeout)
            except (AGIProtocolError, AGITimeout, OSError) as exc:
                self.sessions_failed += 1
                self._log.warning("bad AGI request from %s: %s", peer, exc)
                return
            session = AGISession(reader, writer, request, command_timeout=self._command_timeout)
            if await self._run_session(session, peer):
                self.sessions_served += 1
            else:
                self.sessions_failed += 1
        except Exception:
            # Only a bug in this module gets here; log it rather than lose it in asyncio.
            self.sessions_failed += 1
            self._log.exception("FastAGI connection from %s failed", peer)
        finally:
            try:
                if session is not None:
                    await session.close()
                else:
                    await close_writer(writer)
            finally:
                self._tasks.discard(task)

    async def _run_session(self, session: AGISession, peer: str) -> bool:
        """Run the routed handler; True when the call ended normally (hang-ups included)."""
        request = session.request
        where = f"{request.script!r} from {peer} (channel {request.channel}, {request.uniqueid})"
        handler = self._routes.get(request.script)
        if handler is None:
            self._log.warning("unknown AGI script %s", where)
            await self._report_error(session, f"unknown script {_printable(request.script)}")
            return False
        try:
            await handler(session)
        except AGIHangup as exc:
            self._log.info("AGI %s ended by hang-up: %s", where, exc)
        except Exception as exc:
            self._log.exception("AGI handler for %s failed", where)
            await self._report_error(session, f"handler failed: {type(exc).__name__}")
            return False
        return True

    async def _report_error(self, session: AGISession, reason: str) -> None:
        """Best effort: tell the dialplan so it can send the call to its failover."""
        try:
            await session.set_variable("OMNICC_STATUS", "ERROR")
            await session.set_variable("OMNICC_ERROR", reason)
        except (AGIError, ValueError) as exc:
            self._log.info(
                "could not set OMNICC_STATUS=ERROR on %s: %s", session.request.channel, exc
            )
