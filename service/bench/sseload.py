"""A lean Server-Sent Events load client: thousands of streams in one process, like `wsload`.

Each stream is one `GET /jobs/{job}/events` over HTTP/1.1; the chunked body is parsed just
enough to find each `data:` line. Events are counted and timed into the same `Received` sink
as WebSocket frames; the stream's opening `retry:` line counts as the frame a WebSocket watch
answers with (`watching`), so the phases wait on both transports the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from urllib.parse import urlsplit

from service.bench.wsload import Received, WsProtocol


class SseProtocol(WsProtocol):
    """One event stream; reuses the WebSocket client's event handling (`_handle`)."""

    def __init__(self, host: str, path: str, sink: Received, keep_seqs: bool) -> None:
        super().__init__(host, path, sink, keep_seqs)
        self._request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        self._chunked = bytearray()  # the body, de-chunked, not yet split into lines

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._opened(b"200"):
            return
        self._dechunk()
        self._lines()

    def _dechunk(self) -> None:
        buffer, offset = self._buffer, 0
        while True:
            end = buffer.find(b"\r\n", offset)
            if end < 0:
                break
            size = int(buffer[offset:end], 16)
            if len(buffer) < end + 2 + size + 2:
                break
            if size == 0:  # the response ended
                if self.transport is not None:
                    self.transport.close()
                offset = end + 4
                break
            self._chunked += buffer[end + 2 : end + 2 + size]
            offset = end + 2 + size + 2
        del buffer[:offset]

    def _lines(self) -> None:
        text, offset = self._chunked, 0
        while (end := text.find(b"\n", offset)) >= 0:
            line = bytes(text[offset:end])
            offset = end + 1
            if line.startswith(b"data: "):
                self._handle(line[6:])
            elif line.startswith(b"retry:"):
                self._sink.frames += 1  # the stream is open: as a `watching` frame
        del text[:offset]


async def open_streams(
    url: str, jobs: list[tuple[str, str]], sink: Received, keep_seqs: bool = False
) -> list[WsProtocol]:
    """One event stream per (job, token), opened in batches."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    loop = asyncio.get_running_loop()
    streams: list[WsProtocol] = []
    for start in range(0, len(jobs), 200):
        batch = []
        for job, token in jobs[start : start + 200]:
            protocol = SseProtocol(
                f"{host}:{port}", f"/jobs/{job}/events?token={token}", sink, keep_seqs
            )
            await loop.create_connection(_factory(protocol), host, port)
            batch.append(protocol)
        await asyncio.gather(*(p.open for p in batch))
        streams += batch
    return streams


def _factory(protocol: WsProtocol) -> Callable[[], WsProtocol]:
    return lambda: protocol
