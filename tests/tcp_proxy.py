"""A TCP relay a test can stop and start again: the dependency behind it "goes away"."""

from __future__ import annotations

import asyncio
import contextlib


class TcpProxy:
    """127.0.0.1:<port> <-> <target_host>:<target_port>. ``stop()`` refuses new connections and
    cuts live ones; ``start()`` again listens on the same port.

    ``delay`` (seconds, settable at any time) holds every chunk that long in each direction:
    a slow link. Chunks keep their order, and reading goes on while earlier chunks wait, so a
    delay adds latency without cutting throughput."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.delay = 0.0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in list(self._writers):
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        self._writers.clear()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.close()
            return
        self._writers |= {client_w, server_w}
        for src, dst in ((client_r, server_w), (server_r, client_w)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        """Read ``src`` and queue each chunk with the time it is due; ``_deliver`` writes them
        to ``dst`` in order once due. At the end of ``src`` the rest is delivered first."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=1024)  # <= 64 MiB
        writer = asyncio.create_task(self._deliver(queue, dst))
        try:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while not writer.done() and (data := await src.read(65536)):
                    await queue.put((loop.time() + self.delay, data))
            if not writer.done():
                await queue.put((loop.time() + self.delay, b""))  # the end, after the rest
                await writer
        finally:
            writer.cancel()
            dst.close()

    @staticmethod
    async def _deliver(
        queue: asyncio.Queue[tuple[float, bytes]], dst: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(OSError):
            while True:
                due, data = await queue.get()
                if not data:
                    return
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
                dst.write(data)
                await dst.drain()
