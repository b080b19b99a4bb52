"""Run an aiohttp application on a loopback port inside the current event loop."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web


class LoopbackServer:
    """``await start()`` binds ``host:port`` (0: a free port) and returns the base URL.

    ``make_runner(app, shutdown_timeout)`` builds the runner (default: a plain
    AppRunner; the front door passes a guarded one, see :mod:`._conn`)."""

    def __init__(
        self,
        app: web.Application,
        host: str = "127.0.0.1",
        port: int = 0,
        shutdown_timeout: float = 1.0,
        make_runner: Callable[[web.Application, float], web.AppRunner] | None = None,
        handler_cancellation: bool = False,
    ):
        self.app = app
        self.host = host
        self.port = port
        self.url = ""
        self.shutdown_timeout = shutdown_timeout  # how long stop() waits for handlers
        self._make_runner = make_runner
        self.handler_cancellation = (
            handler_cancellation  # cancel a handler whose client disconnected
        )
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    async def start(self) -> str:
        if self._make_runner is not None:
            self._runner = self._make_runner(self.app, self.shutdown_timeout)
        else:
            self._runner = web.AppRunner(
                self.app,
                access_log=None,
                handle_signals=False,
                shutdown_timeout=self.shutdown_timeout,
                handler_cancellation=self.handler_cancellation,
            )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=1024)
        await site.start()
        self._site = site
        host, port = self._runner.addresses[0][:2]
        self.port = port
        self.url = f"http://{host}:{port}"
        return self.url

    @property
    def num_connections(self) -> int:
        """Connections open now (aiohttp's count; a guarded runner's refused ones excluded)."""
        if self._runner is None or self._runner.server is None:
            return 0
        return len(self._runner.server.connections)

    async def stop_listening(self) -> None:
        """Refuse new connections and close idle keep-alive ones; in-flight requests go on."""
        if self._site is not None and self._runner is not None:
            await self._site.stop()
            self._site = None
            if self._runner.server is not None:
                self._runner.server.pre_shutdown()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
