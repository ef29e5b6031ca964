"""The viewer page each peer serves: the remote reconstruction, the local crop, live stats.

An aiohttp server on ``127.0.0.1`` (the page is for the person at this machine) serves the
static page (``index.html``, ``viewer.js``, ``viewer.css`` in this folder) and a websocket,
``/ws``, that pushes:

* binary messages: byte 0 the kind (1 remote frame, 2 local preview, 3 audio), bytes 1-4 the
  frame index (uint32 little-endian), then a JPEG picture (kinds 1, 2) or mono 16-bit 48 kHz
  PCM (kind 3);
* text messages: JSON, ``{"type": "stats", ...}`` twice a second and ``{"type": "status",
  "text": ...}`` when the call's state changes.

Pictures are JPEG-coded on a worker thread, newest first: when coding falls behind, older
pictures are dropped, never queued. Nothing the page sends is needed; anything it sends is
read and ignored (bounded in size).
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import struct
from concurrent.futures import ThreadPoolExecutor
from importlib import resources

import av
import numpy as np
from aiohttp import WSMsgType, web

from iwcodec.call.signaling import listen

KIND_REMOTE = 1
KIND_LOCAL = 2
KIND_AUDIO = 3
JPEG_QSCALE = 3  # FFmpeg mjpeg quantiser, 1 (best) .. 31; the page is a monitor, not a metric
_STATIC = {"index.html": "text/html", "viewer.js": "text/javascript", "viewer.css": "text/css"}


def encode_jpeg(rgb: np.ndarray, qscale: int = JPEG_QSCALE) -> bytes:
    """(H, W, 3) uint8 RGB, even sides -> a baseline JPEG (FFmpeg's mjpeg, 4:2:0)."""
    ctx = av.CodecContext.create("mjpeg", "w")
    ctx.width, ctx.height = rgb.shape[1], rgb.shape[0]
    ctx.pix_fmt = "yuvj420p"
    ctx.time_base = fractions.Fraction(1, 30)
    ctx.options = {"qmin": str(qscale), "qmax": str(qscale)}
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    frame = frame.reformat(format="yuvj420p")
    packets = list(ctx.encode(frame)) + list(ctx.encode(None))
    return b"".join(bytes(p) for p in packets)


def _asset(name: str) -> bytes:
    return (resources.files("iwcodec.call.viewer") / name).read_bytes()


class Viewer:
    """Serves the page; ``show``/``push_stats``/``push_audio``/``set_status`` are called on the
    event loop's thread and never block it."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._clients: set[web.WebSocketResponse] = set()
        self._runner: web.AppRunner | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="iwcodec-jpeg")
        self._latest: dict[int, tuple[int, np.ndarray] | None] = {
            KIND_REMOTE: None,
            KIND_LOCAL: None,
        }
        self._coding: dict[int, bool] = {KIND_REMOTE: False, KIND_LOCAL: False}
        self._status = "waiting"
        self._stats: dict = {}
        self.sent_frames = {KIND_REMOTE: 0, KIND_LOCAL: 0}
        self.last_remote_sent: tuple[int, float] | None = None  # (index, loop time)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    @property
    def clients(self) -> int:
        return len(self._clients)

    async def start(self) -> str:
        app = web.Application(client_max_size=4096)
        app.router.add_get("/", self._page)
        for name in _STATIC:
            app.router.add_get(f"/{name}", self._static)
        app.router.add_get("/ws", self._socket)
        app.router.add_get("/stats.json", self._stats_json)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        self.port = await listen(
            self._runner, self.host, self.port, "viewer", advice="; pick another --view-port"
        )
        return self.url

    async def stop(self) -> None:
        for ws in list(self._clients):
            with contextlib.suppress(Exception):
                await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._pool.shutdown(wait=False)

    # ------------------------------------------------------------------------------ http
    async def _page(self, request: web.Request) -> web.Response:
        return web.Response(body=_asset("index.html"), content_type="text/html")

    async def _static(self, request: web.Request) -> web.Response:
        name = request.path.lstrip("/")
        return web.Response(body=_asset(name), content_type=_STATIC[name])

    async def _stats_json(self, request: web.Request) -> web.Response:
        return web.json_response(self._stats)

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=4096, heartbeat=20.0)
        await ws.prepare(request)
        self._clients.add(ws)
        try:
            await ws.send_str(json.dumps({"type": "status", "text": self._status}))
            if self._stats:
                await ws.send_str(json.dumps(self._stats))
            async for msg in ws:
                if msg.type == WSMsgType.ERROR:
                    break
        finally:
            self._clients.discard(ws)
        return ws

    # ---------------------------------------------------------------------------- pushing
    def show(self, kind: int, rgb: np.ndarray, index: int) -> None:
        """Queue a picture (the newest one replaces one still waiting)."""
        if not self._clients:
            return
        self._latest[kind] = (index, rgb)
        if not self._coding[kind]:
            self._coding[kind] = True
            asyncio.ensure_future(self._code_and_send(kind))

    async def _code_and_send(self, kind: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            while (item := self._latest[kind]) is not None:
                self._latest[kind] = None
                index, rgb = item
                jpeg = await loop.run_in_executor(self._pool, encode_jpeg, rgb)
                await self._broadcast(struct.pack("<BI", kind, index & 0xFFFFFFFF) + jpeg)
                self.sent_frames[kind] += 1
                if kind == KIND_REMOTE:
                    self.last_remote_sent = (index, loop.time())
        finally:
            self._coding[kind] = False

    def push_audio(self, pcm: np.ndarray) -> None:
        """Mono int16 PCM at 48 kHz for the page to play."""
        if self._clients:
            data = struct.pack("<BI", KIND_AUDIO, 0) + np.ascontiguousarray(pcm, "<i2").tobytes()
            asyncio.ensure_future(self._broadcast(data))

    def push_stats(self, stats: dict) -> None:
        self._stats = {"type": "stats", **stats}
        if self._clients:
            asyncio.ensure_future(self._broadcast_text(json.dumps(self._stats)))

    def set_status(self, text: str) -> None:
        self._status = text
        if self._clients:
            asyncio.ensure_future(
                self._broadcast_text(json.dumps({"type": "status", "text": text}))
            )

    async def _broadcast(self, data: bytes) -> None:
        for ws in list(self._clients):
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_bytes(data)

    async def _broadcast_text(self, text: str) -> None:
        for ws in list(self._clients):
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_str(text)
