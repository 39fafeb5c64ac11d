"""Headless Chromium over the MLflow UI: a page's DOM once the single-page app has drawn it, and how long that took.
Used by tests/test_mlflow_ui.py and the load benchmark.

    dom = render(chromium, url, profile, ready=lambda dom: "Run Name" in dom)   # --dump-dom, virtual time
    with Page(chromium, profile) as page:                                        # DevTools, wall-clock time
        seconds = page.open(url, ready=lambda dom: "Run Name" in dom)

`render` is one `chromium --headless --dump-dom` per try: its virtual-time budget lets the app fetch and draw
without waiting in real time, so it is the quick check. `Page` drives one browser over the DevTools protocol
(aiohttp's websocket client) and polls the live DOM, so `open` measures real seconds until a readiness condition
holds: what a user waits. Every browser runs in a process group of its own with a throw-away profile and is killed
whole, even when the check fails.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import html
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wdlab.workspace import kill_group, tool_env

Ready = Callable[[str], bool]  # the page's DOM (outerHTML) → whether it shows what was asked for

MISSING = "Chromium is not installed: run .ci/install-debian chromium fonts-dejavu-core to enable the browser checks"
WINDOW = (1400, 900)  # pixels: wide enough for the runs table's columns and the chart view's side panel
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
)  # fmt: skip


class NotRendered(AssertionError):
    """The page never met its readiness condition; the message carries the browser's stderr and the visible text."""


def find_chromium() -> str | None:
    """The Chromium executable (Debian's `chromium`), or None."""
    for candidate in (shutil.which("chromium"), "/usr/bin/chromium", shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def dom_text(dom: str) -> str:
    """The visible text of a DOM dump, whitespace collapsed."""
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom))).strip()


def run_links(dom: str) -> dict[str, str]:
    """run id → the link text of every `#/experiments/<id>/runs/<run id>` link on the page."""
    links = re.findall(r'<a\b[^>]*\bhref="#/experiments/[^/"]+/runs/([0-9a-f]{32})"[^>]*>(.*?)</a>', dom, flags=re.S)
    return {run_id: html.unescape(re.sub(r"<[^>]+>", "", text)).strip() for run_id, text in links}


def _kill_browser(proc: subprocess.Popen) -> None:
    kill_group(proc, grace=2)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # no renderer or GPU process of this browser left behind


def render(
    chromium: str,
    url: str,
    profile: Path,
    ready: Ready,
    screenshot: Path | None = None,
    seconds: float = 85,
    budgets_ms: tuple[int, ...] = (15_000, 40_000),
) -> str:
    """The DOM of `url` after the single-page app has rendered, as Chromium's --dump-dom gives it.

    Each virtual-time budget in turn lets the React app fetch and render until `ready(dom)` holds, all within
    `seconds` of wall-clock time; raises NotRendered with what the browser said otherwise.
    """
    deadline = time.monotonic() + seconds
    dom, notes = "", []
    for attempt, budget_ms in enumerate(budgets_ms):
        left = deadline - time.monotonic()
        if left < 10:
            break
        cmd = [
            chromium, *FLAGS, f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--user-data-dir={profile}-{attempt}",
            f"--virtual-time-budget={budget_ms}",
            *([f"--screenshot={screenshot}"] if screenshot else []),
            "--dump-dom", url,
        ]  # fmt: skip
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=tool_env(), start_new_session=True
        )
        try:
            dom, err = proc.communicate(timeout=left)
        except subprocess.TimeoutExpired:
            _kill_browser(proc)
            dom, err = proc.communicate(timeout=10)
            err = f"(killed after {left:.0f} s) {err}"
        finally:
            _kill_browser(proc)
        if dom and ready(dom):
            return dom
        notes.append(f"budget {budget_ms} ms: exit {proc.returncode}; stderr tail: {err[-800:]}")
    raise NotRendered(
        f"Chromium never rendered {url} as expected.\n" + "\n".join(notes) + f"\nvisible text: {dom_text(dom)[:2000]}"
    )


class Page:
    """One headless Chromium tab driven over the DevTools protocol; `open` times a page until it is ready.

    A fresh profile per Page: the MLflow UI keeps choices (such as its workflow mode) in local storage, so a new
    Page sees what a first-time user sees.
    """

    def __init__(
        self, chromium: str, profile: Path, start_timeout: float = 30, window: tuple[int, int] = WINDOW
    ) -> None:
        self.chromium, self.profile, self.start_timeout, self.window = chromium, profile, start_timeout, window
        self._ids = itertools.count(1)
        self._loop = asyncio.new_event_loop()
        self._proc: subprocess.Popen | None = None
        self._session: Any = None
        self._socket: Any = None

    def __enter__(self) -> Page:
        self.profile.mkdir(parents=True, exist_ok=True)
        port_file = self.profile / "DevToolsActivePort"  # Chromium writes its port here when given port 0
        port_file.unlink(missing_ok=True)
        self._log = (self.profile / "chromium.log").open("w")
        self._proc = subprocess.Popen(
            [
                self.chromium, *FLAGS, f"--window-size={self.window[0]},{self.window[1]}",
                f"--user-data-dir={self.profile}", "--remote-debugging-port=0", "about:blank",
            ],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=tool_env(),
            start_new_session=True,
        )  # fmt: skip
        try:
            port = self._wait_for_port(port_file)
            self._loop.run_until_complete(self._connect(port))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self._loop.run_until_complete(self._disconnect())
        self._loop.close()
        if self._proc is not None:
            _kill_browser(self._proc)
        self._log.close()

    def _wait_for_port(self, port_file: Path) -> int:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            with contextlib.suppress(OSError, ValueError, IndexError):
                return int(port_file.read_text().splitlines()[0])
            time.sleep(0.1)
        log = (self.profile / "chromium.log").read_text(errors="replace")[-2000:]
        raise NotRendered(f"Chromium's DevTools did not start within {self.start_timeout:.0f} s; its log:\n{log}")

    async def _connect(self, port: int) -> None:
        import aiohttp

        def page_target() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
                targets = json.loads(response.read())
            return next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")

        self._session = aiohttp.ClientSession()
        self._socket = await self._session.ws_connect(page_target(), max_msg_size=0)
        await self._call("Page.enable")

    async def _disconnect(self) -> None:
        if self._socket is not None:
            await self._socket.close()
        if self._session is not None:
            await self._session.close()

    async def _call(self, method: str, **params: Any) -> dict:
        """One DevTools command and its result (events that arrive meanwhile are skipped)."""
        ident = next(self._ids)
        await self._socket.send_json({"id": ident, "method": method, "params": params})
        while True:
            message = await self._socket.receive_json()
            if message.get("id") == ident:
                if "error" in message:
                    raise NotRendered(f"DevTools {method}: {message['error']}")
                return message.get("result", {})

    def call(self, method: str, **params: Any) -> dict:
        """A DevTools protocol command, e.g. page.call("Runtime.evaluate", expression="document.title")."""
        return self._loop.run_until_complete(self._call(method, **params))

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    def dom(self) -> str:
        return self.evaluate("document.documentElement.outerHTML") or ""

    def wait(self, ready: Ready, timeout: float = 60, poll: float = 0.1) -> float:
        """Seconds until `ready(dom)` holds, polling the live DOM; raises NotRendered after `timeout` seconds."""
        start = time.monotonic()
        while True:
            dom = self.dom()
            if ready(dom):
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise NotRendered(f"not ready after {timeout:.0f} s; visible text: {dom_text(dom)[:2000]}")
            time.sleep(poll)

    def open(self, url: str, ready: Ready, timeout: float = 60) -> float:
        """Load `url` afresh (via about:blank, so a change of hash alone is a full load too) and return the
        wall-clock seconds from navigation until `ready(dom)` holds."""
        self.call("Page.navigate", url="about:blank")
        start = time.monotonic()
        self.call("Page.navigate", url=url)
        self.wait(ready, timeout)
        return time.monotonic() - start

    def screenshot(self, path: Path) -> Path:
        """The tab as a PNG at `path`."""
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path
