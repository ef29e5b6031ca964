"""The signaling server (iwcodec/call/signaling.py) against well-behaved and hostile clients.

Every refusal must be a clear error message (or a close code the client turns into one), and
the server must keep serving the other rooms: each test ends with a good pair meeting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import time

import aiohttp
import pytest

from iwcodec.call import signaling
from iwcodec.call.signaling import SignalingClient, SignalingServer
from iwcodec.errors import CallError

TOKEN = "s3cret-room-token-1"


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


async def raw(url: str):
    session = aiohttp.ClientSession()
    ws = await session.ws_connect(url, max_msg_size=0)
    return session, ws


async def next_json(ws) -> dict:
    msg = await ws.receive(timeout=5)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return json.loads(msg.data)


async def good_pair_meets(server: SignalingServer, room: str = "after") -> None:
    async with SignalingClient(server.url) as a, SignalingClient(server.url) as b:
        assert (await a.join(room, TOKEN, {"who": "a"})).peer is None
        assert (await b.join(room, TOKEN, {"who": "b"})).peer == {"who": "a"}
        assert (await a.recv(timeout=5)) == {"type": "peer", "hello": {"who": "b"}}
        await b.relay({"kind": "sdp", "type": "offer", "sdp": "v=0"})
        assert (await a.recv(timeout=5))["data"]["sdp"] == "v=0"


def test_two_peers_meet_relay_and_part():
    async def scenario():
        server = SignalingServer(TOKEN)
        await server.start()
        try:
            async with SignalingClient(server.url) as a:
                await a.join("r1", TOKEN, {"who": "a"})
                async with SignalingClient(server.url) as b:
                    await b.join("r1", TOKEN, {"who": "b"})
                    await a.recv(timeout=5)
                    await a.relay({"hello": "b"})
                    assert (await b.recv(timeout=5)) == {"type": "relay", "data": {"hello": "b"}}
                assert (await a.recv(timeout=5)) == {"type": "peer-left"}
            await asyncio.sleep(0.1)
            assert server.rooms == {}
        finally:
            await server.stop()

    run(scenario())


@pytest.mark.parametrize(
    "message, code",
    [
        ("not json at all", "bad-message"),
        ("[1, 2, 3]", "bad-message"),
        ('{"no": "type"}', "bad-message"),
        ('{"type": "dance"}', "bad-message"),
        ('{"type": "relay", "data": {}}', "not-joined"),
        ('{"type": "join", "room": "../etc", "token": "s3cret-room-token-1"}', "bad-room"),
        (
            '{"type": "join", "room": "' + "r" * 65 + '", "token": "s3cret-room-token-1"}',
            "bad-room",
        ),
        (
            '{"type": "join", "room": "r", "token": "s3cret-room-token-1", "hello": [1]}',
            "bad-message",
        ),
        (
            '{"type": "join", "room": "r", "token": "s3cret-room-token-1", "hello": {"x": "'
            + "y" * 3000
            + '"}}',
            "bad-message",
        ),
    ],
)
def test_malformed_messages_get_a_clear_error_and_the_socket_stays(message, code):
    async def scenario():
        server = SignalingServer(TOKEN)
        await server.start()
        try:
            session, ws = await raw(server.url)
            try:
                await ws.send_str(message)
                reply = await next_json(ws)
                assert reply["type"] == "error" and reply["code"] == code
                assert reply["message"]
                # the same connection can still join
                await ws.send_str(json.dumps({"type": "join", "room": "ok", "token": TOKEN}))
                assert (await next_json(ws))["type"] == "joined"
            finally:
                await ws.close()
                await session.close()
            await good_pair_meets(server)
            assert server.stats[code] == 1
        finally:
            await server.stop()

    run(scenario())


def test_binary_message_is_refused():
    async def scenario():
        server = SignalingServer(TOKEN)
        await server.start()
        try:
            session, ws = await raw(server.url)
            await ws.send_bytes(b"\x00\x01garbage")
            reply = await next_json(ws)
            assert reply["code"] == "bad-message" and "binary" in reply["message"]
            await ws.close()
            await session.close()
            await good_pair_meets(server)
        finally:
            await server.stop()

    run(scenario())


def test_wrong_token_is_refused_and_closed(monkeypatch):
    monkeypatch.setattr(signaling, "BAD_TOKEN_DELAY", 0.02)  # the penalty has its own test

    async def scenario():
        server = SignalingServer(TOKEN)
        await server.start()
        try:
            async with SignalingClient(server.url) as c:
                with pytest.raises(CallError, match="wrong room token"):
                    await c.join("r", "guess", {})
            await asyncio.sleep(0.05)  # the address's penalty (0.02 s, doubled) passes
            session, ws = await raw(server.url)
            await ws.send_str(json.dumps({"type": "join", "room": "r", "token": "s3cre"}))
            assert (await next_json(ws))["code"] == "bad-token"
            closing = await ws.receive(timeout=5)
            assert closing.type == aiohttp.WSMsgType.CLOSE
            assert ws.close_code == signaling.CLOSE_BAD_TOKEN
            await session.close()
            assert "r" not in server.rooms
            await asyncio.sleep(0.1)
            await good_pair_meets(server)
        finally:
            await server.stop()

    run(scenario())


def test_oversized_message_closes_only_that_socket():
    async def scenario():
        server = SignalingServer(TOKEN)
        await server.start()
        try:
            async with SignalingClient(server.url) as bystander:
                await bystander.join("busy", TOKEN, {})
                session, ws = await raw(server.url)
                big = json.dumps(
                    {"type": "relay", "data": {"x": "z" * signaling.MAX_MESSAGE_BYTES}}
                )
                await ws.send_str(big)
                msg = await ws.receive(timeout=5)
                assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
                assert ws.close_code == 1009  # message too big
                await session.close()
                await good_pair_meets(server)
                assert "busy" in server.rooms  # the bystander's room is untouched
        finally:
            await server.stop()

    run(scenario())


def test_oversized_message_from_the_server_side_is_a_clear_client_error():
    # a client must also bound what it accepts; the server never sends more, so fake one
    async def scenario():
        async def handler(request):
            ws = aiohttp.web.WebSocketResponse()
            await ws.prepare(request)
            await ws.receive()
            await ws.send_str("x" * (signaling.MAX_MESSAGE_BYTES + 1))
            # open until the client, having refused it, closes (or 1 s: a client that took it
            # and waits for more then sees the socket close, not this message)
            with contextlib.suppress(asyncio.TimeoutError):
                await ws.receive(timeout=1)
            return ws

        app = aiohttp.web.Application()
        app.router.add_get("/ws", handler)
        runner = aiohttp.web.AppRunner(app)
        await runner.setup()
        site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        try:
            async with SignalingClient(f"ws://127.0.0.1:{port}/ws") as c:
                with pytest.raises(CallError, match="too large"):
                    await c.join("r", TOKEN, {})
        finally:
            await runner.cleanup()

    run(scenario())


def test_room_holds_two_and_the_server_bounds_rooms():
    async def scenario():
        server = SignalingServer(TOKEN, max_rooms=2)
        await server.start()
        try:
            async with (
                SignalingClient(server.url) as a,
                SignalingClient(server.url) as b,
                SignalingClient(server.url) as c,
            ):
                await a.join("pair", TOKEN, {})
                await b.join("pair", TOKEN, {})
                with pytest.raises(CallError, match="already has 2 peers"):
                    await c.join("pair", TOKEN, {})
                await c.join("second", TOKEN, {})  # a refused join leaves the socket usable
                async with SignalingClient(server.url) as d:
                    with pytest.raises(CallError, match="maximum of 2 rooms"):
                        await d.join("third", TOKEN, {})
            await asyncio.sleep(0.1)
            await good_pair_meets(server)
        finally:
            await server.stop()

    run(scenario())


def test_repeated_bad_messages_floods_and_silence_are_cut_off():
    async def scenario():
        server = SignalingServer(TOKEN, join_timeout=0.5)
        await server.start()
        try:
            session = aiohttp.ClientSession()
            # many bad messages
            ws = await session.ws_connect(server.url)
            for _ in range(signaling.MAX_BAD_MESSAGES):
                await ws.send_str("junk")
            codes = [(await next_json(ws))["code"] for _ in range(signaling.MAX_BAD_MESSAGES)]
            assert codes == ["bad-message"] * signaling.MAX_BAD_MESSAGES
            assert (await ws.receive(timeout=5)).type == aiohttp.WSMsgType.CLOSE
            assert ws.close_code == signaling.CLOSE_POLICY
            # a flood of (valid) messages to a partner
            partner = SignalingClient(server.url)
            await partner.connect()
            await partner.join("flood", TOKEN, {})
            ws = await session.ws_connect(server.url)
            await ws.send_str(json.dumps({"type": "join", "room": "flood", "token": TOKEN}))
            for _ in range(signaling.RATE_LIMIT + 5):
                await ws.send_str(json.dumps({"type": "relay", "data": {}}))
            last = None
            while (msg := await ws.receive(timeout=5)).type == aiohttp.WSMsgType.TEXT:
                last = json.loads(msg.data)
            assert last["code"] == "rate" and ws.close_code == signaling.CLOSE_POLICY
            await partner.close()
            # a socket that never joins
            ws = await session.ws_connect(server.url)
            reply = await next_json(ws)
            assert reply["code"] == "join-timeout"
            await session.close()
            await good_pair_meets(server)
            assert server.rooms == {}
        finally:
            await server.stop()

    run(scenario())


def test_client_errors_are_call_errors():
    async def scenario():
        with pytest.raises(CallError, match="cannot reach the signaling server"):
            async with SignalingClient("ws://127.0.0.1:9/ws", timeout=2):
                pass
        with pytest.raises(CallError, match="expected ws://"):
            SignalingClient("http://example.org/")
        server = SignalingServer(TOKEN)
        await server.start()
        try:
            async with SignalingClient(server.url) as c:
                with pytest.raises(CallError, match="room"):
                    await c.join("bad room", TOKEN, {})
        finally:
            await server.stop()

    run(scenario())
    for short in ("", "s3cret", "x" * (signaling.MIN_TOKEN_CHARS - 1)):
        with pytest.raises(CallError, match="at least 16 characters"):
            SignalingServer(short)
    assert len(signaling.new_token()) >= signaling.MIN_TOKEN_CHARS


def test_iwcodec_signal_command_serves_rooms(tmp_path):
    env = {**os.environ, "IWCODEC_TOKEN": ""}
    proc = subprocess.Popen(
        [sys.executable, "-m", "iwcodec", "signal", "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        token = url = None
        for line in proc.stdout:
            if m := re.search(r"room token (\S+)", line):
                token = m.group(1)
            if m := re.search(r"listening on (\S+)", line):
                url = m.group(1)
                break
        assert token and url, "the command did not print its token and address"

        async def scenario():
            async with SignalingClient(url) as a, SignalingClient(url) as b:
                await a.join("cli", token, {"n": 1})
                assert (await b.join("cli", token, {"n": 2})).peer == {"n": 1}

        run(scenario())
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_port_in_use_is_a_clear_error_for_the_server_and_the_viewer():
    from iwcodec.call.viewer import Viewer

    async def scenario():
        first = SignalingServer(TOKEN)
        await first.start()
        try:
            assert first.port != 0  # the port the system chose
            with pytest.raises(
                CallError, match=rf"signaling server: cannot listen on 127\.0\.0\.1:{first.port} \("
            ):
                await SignalingServer(TOKEN, port=first.port).start()
            with pytest.raises(
                CallError, match=r"viewer: cannot listen on .*; pick another --view-port"
            ):
                await Viewer(port=first.port).start()
            # the first server still serves
            async with SignalingClient(first.url) as a:
                assert (await a.join("r1", TOKEN, {"who": "a"})).peer is None
        finally:
            await first.stop()

    asyncio.run(scenario())


def test_wrong_tokens_wait_longer_each_time_and_lock_the_address_out(monkeypatch):
    """Each wrong token from one address doubles its wait; while it lasts, new sockets from
    the address are refused (429); a right token afterwards clears the penalty."""
    monkeypatch.setattr(signaling, "BAD_TOKEN_DELAY", 0.05)

    async def scenario():
        server = SignalingServer(TOKEN)
        await server.start()
        try:
            waits = []
            for _ in range(3):
                async with SignalingClient(server.url) as c:
                    start = time.monotonic()
                    with pytest.raises(CallError, match="token"):
                        await c.join("r", "not-the-token-at-all", {})
                    waits.append(time.monotonic() - start)
                with pytest.raises(aiohttp.WSServerHandshakeError) as exc:  # still waiting
                    session, ws = await raw(server.url)
                assert exc.value.status == 429
                await asyncio.sleep(0.05 * 2 ** len(waits) + 0.05)
            assert waits[0] >= 0.05 and waits[1] >= 0.1 and waits[2] >= 0.2, waits
            assert server.stats["refused-penalty"] == 3
            await good_pair_meets(server)  # the right token clears the address
            assert server._penalty == {}
        finally:
            await server.stop()

    run(scenario())


def test_silent_sockets_per_address_are_capped_and_get_GET_reveals_nothing():
    async def scenario():
        server = SignalingServer(TOKEN, join_timeout=5)
        await server.start()
        base = server.url.removesuffix("/ws")
        try:
            silent = [await raw(server.url) for _ in range(signaling.MAX_PENDING_PER_ADDRESS)]
            with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
                await raw(server.url)
            assert exc.value.status == 429 and server.stats["refused-pending"] == 1
            async with aiohttp.ClientSession() as http:
                async with http.get(base + "/") as r:
                    text = await r.text()
                assert text == "iwcodec signaling server\n"  # no counts without the token
                async with http.get(base + "/", params={"token": TOKEN}) as r:
                    assert "connections" in await r.text()
            for session, ws in silent:
                await ws.close()
                await session.close()
            await asyncio.sleep(0.2)
            assert server._pending == {}
            await good_pair_meets(server)
        finally:
            await server.stop()

    run(scenario())
