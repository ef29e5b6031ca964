"""The viewer page in a real browser: headless Chromium (Debian's ``chromium``) opens the page a
peer serves during a call, and two screenshots of the remote video, a second apart, differ:
the video moves. The browser is driven through its DevTools protocol (a websocket), so the
screenshots are taken once frames are flowing, not at page load."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from _call import needs_host_address, one_torch_thread

from bitstream import ImageCodec
from iwcodec.call.halves import CallHooks
from iwcodec.call.loopback import Peer, run_pair, tiny_model
from iwcodec.keyframe import decode_keyframe, encode_keyframe

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [
    pytest.mark.realtime,
    pytest.mark.skipif(
        CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"
    ),
    needs_host_address,
]


class Browser:
    """Headless Chromium with a fresh profile, driven over the DevTools protocol."""

    def __init__(self, profile: Path) -> None:
        self.profile = profile
        self.proc: subprocess.Popen | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ws = None
        self._id = 0

    async def __aenter__(self) -> Browser:
        self.proc = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--mute-audio",
                f"--user-data-dir={self.profile}",
                "--remote-debugging-port=0",
                "--window-size=1100,800",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = self.profile / "DevToolsActivePort"
        for _ in range(300):
            if port_file.exists() and len(port_file.read_text().split()) >= 2:
                break
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        self._session = aiohttp.ClientSession()
        async with self._session.get(f"http://127.0.0.1:{port}/json/list") as r:
            pages = [t for t in await r.json() if t["type"] == "page"]
        self._ws = await self._session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    async def call(self, method: str, **params) -> dict:
        self._id += 1
        await self._ws.send_str(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads((await self._ws.receive(timeout=30)).data)
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    async def evaluate(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    async def screenshot(self, clip: dict) -> np.ndarray:
        result = await self.call("Page.captureScreenshot", format="png", clip={**clip, "scale": 1})
        return decode_keyframe(base64.b64decode(result["data"]), ImageCodec.PNG)


@pytest.mark.slow
def test_viewer_page_shows_moving_video_in_headless_chromium(tmp_path):
    model = tiny_model(tmp_path / "tiny.safetensors")
    viewer_url: asyncio.Future | None = None
    shots: dict[str, object] = {}

    def connected(url: str | None) -> None:
        if url is not None and not viewer_url.done():
            viewer_url.set_result(url)

    async def look() -> None:
        url = await asyncio.wait_for(viewer_url, 60)
        async with Browser(tmp_path / "profile") as browser:
            await browser.call("Page.enable")
            await browser.call("Page.navigate", url=url)
            for _ in range(200):  # until frames are drawn
                label = await browser.evaluate(
                    "document.getElementById('remote-index').textContent"
                )
                if label and label.startswith("frame"):
                    break
                await asyncio.sleep(0.1)
            shots["label_1"] = label
            rect = await browser.evaluate(
                "JSON.stringify(document.getElementById('remote').getBoundingClientRect())"
            )
            box = json.loads(rect)
            clip = {k: box[k] for k in ("x", "y", "width", "height")}
            shots["first"] = await browser.screenshot(clip)
            await asyncio.sleep(1.0)
            shots["second"] = await browser.screenshot(clip)
            shots["label_2"] = await browser.evaluate(
                "document.getElementById('remote-index').textContent"
            )
            shots["stats"] = await browser.evaluate(
                "document.getElementById('payload-received').textContent"
            )
            shots["status"] = await browser.evaluate(
                "document.getElementById('status').textContent"
            )
            shots["page"] = await browser.screenshot({"x": 0, "y": 0, "width": 1100, "height": 800})

    async def scenario():
        nonlocal viewer_url
        viewer_url = asyncio.get_running_loop().create_future()
        a = Peer(model, audio="off")
        b = Peer(model, audio="off", view_port=0, hooks=CallHooks(on_connected=connected))
        viewing = asyncio.ensure_future(look())
        reports = await run_pair(a, b, 14.0)
        await viewing
        return reports

    start = time.monotonic()
    with one_torch_thread():
        reports = asyncio.run(scenario())
    assert not any(isinstance(r, BaseException) for r in reports), reports
    assert time.monotonic() - start < 90
    first, second = shots["first"], shots["second"]
    assert first.shape == second.shape and first.shape[0] >= 256
    assert first.std() > 5, "the video area is blank"
    diff = np.abs(first.astype(np.int16) - second.astype(np.int16)).mean()
    assert diff > 1.0, f"the video did not move (mean difference {diff:.2f})"
    assert shots["label_1"] != shots["label_2"]
    assert shots["stats"] not in ("–", None, "")
    assert shots["status"] == "in the call"
    page = shots["page"]
    (tmp_path / "viewer.png").write_bytes(
        encode_keyframe(page[: page.shape[0] // 2 * 2, : page.shape[1] // 2 * 2], ImageCodec.PNG)
    )
