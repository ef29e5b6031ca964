"""Signaling for calls: a small websocket server with rooms and a shared token, and its client.

Two peers that want to call each other join the same room on the same server
(``iwcodec signal``); the server then relays their session descriptions (SDP offer and answer)
between them and nothing else. Media never passes through it.

Protocol: JSON text messages on ``ws://HOST:PORT/ws`` (``wss://`` with a certificate).

| from | message | meaning |
|---|---|---|
| client | ``{"type": "join", "room": R, "token": T, "hello": {...}}`` | first message, within ``JOIN_TIMEOUT`` |
| server | ``{"type": "joined", "room": R, "peer": hello or null}`` | in the room; ``peer`` is the one already there |
| server | ``{"type": "peer", "hello": {...}}`` | the other peer arrived (sent to the first one) |
| either | ``{"type": "relay", "data": {...}}`` | passed unchanged to the other peer |
| server | ``{"type": "peer-left"}`` | the other peer left or dropped |
| client | ``{"type": "leave"}`` | leaving (closing the socket does the same) |
| server | ``{"type": "error", "code": C, "message": M}`` | a refused message, in words |

The peer that joins second (it sees ``peer`` in ``joined``) makes the offer. ``hello`` is what a
peer says about itself (its model weights id, entropy table id, ...); the server does not read
it, the other peer checks it (``iwcodec.call.negotiation``).

Hostile clients are refused without hurting the others: messages are bounded
(``MAX_MESSAGE_BYTES``; a larger one closes that socket with code 1009), so are rooms
(``MAX_PEERS_PER_ROOM`` = 2, ``MAX_ROOMS``), room names, hello sizes and the message rate; a
wrong token gets ``bad-token`` and the socket is closed; malformed messages get ``bad-message``
and, after ``MAX_BAD_MESSAGES`` of them, the socket is closed. The token is compared in
constant time.

Guessing the token is made slow and a crowd of silent sockets cannot lock others out:

- tokens shorter than ``MIN_TOKEN_CHARS`` (16) are refused when the server starts; the
  generated default (:func:`new_token`) is 24 URL-safe characters, 144 random bits;
- each wrong token from an address doubles that address's penalty (``BAD_TOKEN_DELAY`` s,
  up to ``MAX_BAD_TOKEN_DELAY``): the answer waits that long, and new sockets from the address
  are refused (HTTP 429) for as long again; a right token clears it. At the cap an address
  tries one token a minute;
- a socket must join within ``JOIN_TIMEOUT`` (3 s); one address holds at most
  ``MAX_PENDING_PER_ADDRESS`` sockets that have not joined yet (more: HTTP 429);
- ``GET /`` says only what the server is; its room and connection counts need
  ``GET /?token=T``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import secrets
import ssl
import time
from collections import deque
from dataclasses import dataclass, field

import aiohttp
from aiohttp import WSCloseCode, WSMsgType, web

from iwcodec.errors import CallError

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024  # an aiortc offer with a few candidates is ~2-4 KB
MAX_HELLO_BYTES = 2048
MAX_PEERS_PER_ROOM = 2
MAX_ROOMS = 1000
MAX_CONNECTIONS = 2 * MAX_ROOMS
MAX_BAD_MESSAGES = 5
RATE_WINDOW = 10.0  # seconds
RATE_LIMIT = 100  # messages per window and connection
JOIN_TIMEOUT = 3.0
MIN_TOKEN_CHARS = 16
MAX_PENDING_PER_ADDRESS = 4
BAD_TOKEN_DELAY = 0.25  # seconds, doubled per wrong token from one address
MAX_BAD_TOKEN_DELAY = 30.0
ROOM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
CLOSE_BAD_TOKEN = 4001
CLOSE_POLICY = 4008


def new_token() -> str:
    """A random room token for a server started without one."""
    return secrets.token_urlsafe(18)


class BadMessage(Exception):
    """A client message the server refuses (code, message)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class _Peer:
    ws: web.WebSocketResponse
    room: str | None = None
    hello: dict | None = None
    address: str = "?"
    pending: bool = True  # has not joined a room yet
    bad: int = 0
    times: deque = field(default_factory=deque)


def _parse_client_message(text: str) -> dict:
    try:
        msg = json.loads(text)
    except (ValueError, RecursionError):
        raise BadMessage("bad-message", "not JSON") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise BadMessage("bad-message", 'expected a JSON object with a "type"')
    return msg


def check_room(room: object) -> str:
    if not isinstance(room, str) or not ROOM_NAME.fullmatch(room):
        raise BadMessage(
            "bad-room",
            "a room name is 1-64 letters, digits, '.', '_' or '-', not starting with"
            " a punctuation mark",
        )
    return room


def check_hello(hello: object) -> dict:
    if not isinstance(hello, dict):
        raise BadMessage("bad-message", '"hello" must be a JSON object')
    if len(json.dumps(hello)) > MAX_HELLO_BYTES:
        raise BadMessage("bad-message", f'"hello" is larger than {MAX_HELLO_BYTES} bytes')
    return hello


async def listen(
    runner: web.AppRunner,
    host: str,
    port: int,
    what: str,
    ssl_context: ssl.SSLContext | None = None,
    advice: str = "",
) -> int:
    """Serve ``runner`` (set up) on ``host:port`` -> the port it listens on (the one the system
    chose for port 0). A port that cannot be had cleans the runner up and raises ``CallError``
    naming ``what``, with ``advice`` appended."""
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise CallError(
            f"{what}: cannot listen on {host}:{port} ({exc.strerror or exc}){advice}"
        ) from None
    sockets = site._server.sockets if site._server else []
    return sockets[0].getsockname()[1] if sockets else port


class SignalingServer:
    """Rooms of two peers that share a token; relays their messages.

    ``await server.start()`` listens (port 0 picks a free one; ``server.port`` tells which),
    ``await server.stop()`` closes every socket. ``stats`` counts what was refused.
    """

    def __init__(
        self,
        token: str,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        max_rooms: int = MAX_ROOMS,
        join_timeout: float = JOIN_TIMEOUT,
    ) -> None:
        if len(token) < MIN_TOKEN_CHARS:
            raise CallError(
                f"the room token must have at least {MIN_TOKEN_CHARS} characters (it is "
                f"{len(token)}): a short token falls to guessing; leave it out for a random one"
            )
        self.token = token.encode()
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.max_rooms = max_rooms
        self.join_timeout = join_timeout
        self.rooms: dict[str, list[_Peer]] = {}
        self.connections = 0
        self.stats: dict[str, int] = {}
        self._runner: web.AppRunner | None = None
        self._pending: dict[str, int] = {}  # address -> sockets that have not joined
        self._penalty: dict[str, tuple[int, float]] = {}  # address -> (wrong tokens, until)

    @property
    def url(self) -> str:
        scheme = "wss" if self.ssl_context else "ws"
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{self.port}/ws"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_MESSAGE_BYTES)
        app.router.add_get("/ws", self.handle)
        app.router.add_get("/", self.index)
        return app

    async def start(self) -> str:
        self._runner = web.AppRunner(self.app(), handle_signals=False, access_log=None)
        await self._runner.setup()
        self.port = await listen(
            self._runner, self.host, self.port, "signaling server", ssl_context=self.ssl_context
        )
        return self.url

    async def stop(self) -> None:
        for peers in list(self.rooms.values()):
            for p in list(peers):
                with contextlib.suppress(Exception):
                    await p.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server stopping")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1

    async def index(self, request: web.Request) -> web.Response:
        token = request.query.get("token", "")
        if not hmac.compare_digest(token.encode("utf-8", "replace"), self.token):
            return web.Response(text="iwcodec signaling server\n")
        return web.Response(
            text=f"iwcodec signaling server: {len(self.rooms)} rooms, {self.connections} connections\n"
        )

    # ------------------------------------------------------------------ per-address limits
    def _penalised(self, address: str) -> bool:
        entry = self._penalty.get(address)
        return entry is not None and time.monotonic() < entry[1]

    def _bad_token_delay(self, address: str) -> float:
        """Record a wrong token from ``address``; the seconds its answer waits:
        BAD_TOKEN_DELAY doubled per wrong token, capped. New sockets from the address are
        refused for that long again after the answer."""
        failures = self._penalty.get(address, (0, 0.0))[0] + 1
        delay = min(BAD_TOKEN_DELAY * 2 ** (failures - 1), MAX_BAD_TOKEN_DELAY)
        self._penalty[address] = (failures, time.monotonic() + 2 * delay)
        if len(self._penalty) > 4 * MAX_CONNECTIONS:  # bounded: forget penalties that ended
            now = time.monotonic()
            self._penalty = {a: e for a, e in self._penalty.items() if e[1] > now}
        return delay

    # ---------------------------------------------------------------------------- one client
    async def handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE_BYTES, heartbeat=20.0)
        if self.connections >= MAX_CONNECTIONS:
            self._count("refused-busy")
            return web.Response(status=503, text="too many connections\n")
        address = request.remote or "?"
        if self._penalised(address):
            self._count("refused-penalty")
            return web.Response(status=429, text="wrong tokens from this address: wait\n")
        if self._pending.get(address, 0) >= MAX_PENDING_PER_ADDRESS:
            self._count("refused-pending")
            return web.Response(status=429, text="too many sockets waiting to join\n")
        await ws.prepare(request)
        self.connections += 1
        self._pending[address] = self._pending.get(address, 0) + 1
        peer = _Peer(ws, address=address)
        try:
            await self._serve(peer)
        except Exception:  # a bug must not take the server down with it
            log.exception("signaling: connection handler failed")
        finally:
            self.connections -= 1
            self._not_pending(peer)
            await self._leave(peer)
            with contextlib.suppress(Exception):
                await ws.close()
        return ws

    async def _serve(self, peer: _Peer) -> None:
        ws = peer.ws
        deadline = time.monotonic() + self.join_timeout
        while True:
            timeout = None if peer.room else max(0.0, deadline - time.monotonic())
            try:
                msg = await ws.receive(timeout=timeout)
            except asyncio.TimeoutError:
                self._count("join-timeout")
                await self._error(peer, "join-timeout", f"no join within {self.join_timeout:g} s")
                await ws.close(code=CLOSE_POLICY, message=b"join timeout")
                return
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                return
            if msg.type == WSMsgType.ERROR:
                # aiohttp closes the socket itself for an oversized message (code 1009)
                self._count("too-large" if ws.close_code == 1009 else "socket-error")
                return
            if not self._within_rate(peer):
                self._count("rate")
                await self._error(
                    peer, "rate", f"more than {RATE_LIMIT} messages in {RATE_WINDOW:.0f} s"
                )
                await ws.close(code=CLOSE_POLICY, message=b"too many messages")
                return
            try:
                if msg.type != WSMsgType.TEXT:
                    raise BadMessage("bad-message", "binary messages are not part of the protocol")
                done = await self._dispatch(peer, _parse_client_message(msg.data))
            except BadMessage as exc:
                self._count(exc.code)
                await self._error(peer, exc.code, str(exc))
                if exc.code == "bad-token":
                    await ws.close(code=CLOSE_BAD_TOKEN, message=b"bad token")
                    return
                peer.bad += 1
                if peer.bad >= MAX_BAD_MESSAGES:
                    await ws.close(code=CLOSE_POLICY, message=b"too many bad messages")
                    return
                continue
            if done:
                return

    def _not_pending(self, peer: _Peer) -> None:
        if peer.pending:
            peer.pending = False
            left = self._pending.get(peer.address, 1) - 1
            if left > 0:
                self._pending[peer.address] = left
            else:
                self._pending.pop(peer.address, None)

    def _within_rate(self, peer: _Peer) -> bool:
        now = time.monotonic()
        peer.times.append(now)
        while peer.times and peer.times[0] < now - RATE_WINDOW:
            peer.times.popleft()
        return len(peer.times) <= RATE_LIMIT

    async def _dispatch(self, peer: _Peer, msg: dict) -> bool:
        kind = msg["type"]
        if kind == "join":
            await self._join(peer, msg)
        elif kind == "relay":
            if peer.room is None:
                raise BadMessage("not-joined", "join a room before relaying")
            data = msg.get("data")
            if not isinstance(data, dict):
                raise BadMessage("bad-message", '"data" must be a JSON object')
            other = self._other(peer)
            if other is None:
                raise BadMessage("no-peer", "nobody else is in the room yet")
            await self._send(other, {"type": "relay", "data": data})
        elif kind == "leave":
            return True
        else:
            raise BadMessage("bad-message", f"unknown message type {kind[:32]!r}")
        return False

    async def _join(self, peer: _Peer, msg: dict) -> None:
        if peer.room is not None:
            raise BadMessage("bad-message", f"already in room {peer.room!r}")
        token = msg.get("token")
        if not isinstance(token, str) or not hmac.compare_digest(
            token.encode("utf-8", "replace"), self.token
        ):
            await asyncio.sleep(self._bad_token_delay(peer.address))  # slows guessing
            raise BadMessage("bad-token", "wrong room token")
        self._penalty.pop(peer.address, None)
        room = check_room(msg.get("room"))
        hello = check_hello(msg.get("hello", {}))
        peers = self.rooms.get(room)
        if peers is None:
            if len(self.rooms) >= self.max_rooms:
                raise BadMessage("busy", f"the server holds its maximum of {self.max_rooms} rooms")
            peers = self.rooms[room] = []
        if len(peers) >= MAX_PEERS_PER_ROOM:
            raise BadMessage("room-full", f"room {room!r} already has {MAX_PEERS_PER_ROOM} peers")
        other = peers[0] if peers else None
        peer.room, peer.hello = room, hello
        self._not_pending(peer)
        peers.append(peer)
        self._count("joined")
        await self._send(
            peer, {"type": "joined", "room": room, "peer": other.hello if other else None}
        )
        if other is not None:
            await self._send(other, {"type": "peer", "hello": hello})

    def _other(self, peer: _Peer) -> _Peer | None:
        for p in self.rooms.get(peer.room or "", ()):
            if p is not peer:
                return p
        return None

    async def _leave(self, peer: _Peer) -> None:
        if peer.room is None:
            return
        peers = self.rooms.get(peer.room, [])
        if peer in peers:
            peers.remove(peer)
        for other in peers:
            await self._send(other, {"type": "peer-left"})
        if not peers:
            self.rooms.pop(peer.room, None)
        peer.room = None

    @staticmethod
    async def _send(peer: _Peer, msg: dict) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await peer.ws.send_str(json.dumps(msg))

    async def _error(self, peer: _Peer, code: str, message: str) -> None:
        await self._send(peer, {"type": "error", "code": code, "message": message})


async def serve_signaling(
    token: str,
    host: str = "0.0.0.0",
    port: int = 8765,
    ssl_context: ssl.SSLContext | None = None,
    ready=None,
) -> None:
    """Run a signaling server until cancelled; ``ready(url)`` is called once it listens."""
    server = SignalingServer(token, host, port, ssl_context)
    url = await server.start()
    if ready is not None:
        ready(url)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()


def tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """A server TLS context from PEM files (both or neither)."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise CallError("TLS needs both a certificate (--tls-cert) and its key (--tls-key)")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise CallError(f"cannot load the TLS certificate {cert} / key {key}: {exc}") from None
    return ctx


# ------------------------------------------------------------------------------------ client


@dataclass(frozen=True)
class Joined:
    """The answer to a join: the room and the hello of the peer already in it (None: first)."""

    room: str
    peer: dict | None


class SignalingClient:
    """One peer's connection to the signaling server.

    ``await client.connect()`` then ``await client.join(room, token, hello)``; ``recv()`` returns
    the next server message (a dict) and raises CallError when the server refuses something or
    the connection ends; ``relay(data)`` sends to the other peer. Use ``async with``.
    """

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        if not re.match(r"wss?://", url):
            raise CallError(f"signaling URL {url!r}: expected ws://HOST:PORT/ws or wss://...")
        self.url = url
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None

    async def __aenter__(self) -> SignalingClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        try:
            self._ws = await self._session.ws_connect(
                self.url, max_msg_size=MAX_MESSAGE_BYTES, heartbeat=20.0, timeout=self.timeout
            )
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
            await self._session.close()
            self._session = None
            raise CallError(
                f"cannot reach the signaling server at {self.url} ({exc.__class__.__name__}: {exc})"
            ) from None

    async def close(self) -> None:
        if self._ws is not None and not self._ws.closed:
            with contextlib.suppress(Exception):
                await self._ws.send_str(json.dumps({"type": "leave"}))
                await self._ws.close()
        if self._session is not None:
            await self._session.close()
        self._ws = self._session = None

    async def send(self, msg: dict[str, object]) -> None:
        if self._ws is None or self._ws.closed:
            raise CallError("the connection to the signaling server is closed")
        try:
            await self._ws.send_str(json.dumps(msg))
        except (ConnectionError, RuntimeError) as exc:
            raise CallError(f"lost the signaling server ({exc})") from None

    async def relay(self, data: dict[str, object]) -> None:
        await self.send({"type": "relay", "data": data})

    async def recv(self, timeout: float | None = None) -> dict:
        """Next message from the server; CallError for an error message or a closed socket."""
        if self._ws is None:
            raise CallError("not connected to the signaling server")
        try:
            msg = await self._ws.receive(timeout=timeout)
        except asyncio.TimeoutError:
            raise
        if msg.type == WSMsgType.TEXT:
            try:
                data = json.loads(msg.data)
            except ValueError:
                raise CallError("the signaling server sent something that is not JSON") from None
            if not isinstance(data, dict) or not isinstance(data.get("type"), str):
                raise CallError("the signaling server sent a message without a type")
            if data["type"] == "error":
                raise CallError(
                    f"the signaling server refused: {str(data.get('message'))[:300]} "
                    f"({str(data.get('code'))[:40]})"
                )
            return data
        code = self._ws.close_code
        if code == 1009:
            raise CallError("the signaling server closed the connection: a message was too large")
        if code == CLOSE_BAD_TOKEN:
            raise CallError("the signaling server refused the room token")
        raise CallError(f"the signaling server closed the connection (code {code})")

    async def join(self, room: str, token: str, hello: dict, timeout: float = 10.0) -> Joined:
        try:
            check_room(room)
        except BadMessage as exc:
            raise CallError(f"room {room!r}: {exc}") from None
        await self.send({"type": "join", "room": room, "token": token, "hello": hello})
        try:
            msg = await self.recv(timeout=timeout)
        except asyncio.TimeoutError:
            raise CallError(
                f"the signaling server did not answer the join within {timeout:.0f} s"
            ) from None
        if msg["type"] != "joined":
            raise CallError(f"the signaling server answered the join with {msg['type']!r}")
        peer = msg.get("peer")
        return Joined(room, peer if isinstance(peer, dict) else None)
