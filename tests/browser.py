"""
A headless Chromium driven through the DevTools protocol over a pipe
(C{--remote-debugging-pipe}: commands on its fd 3, answers on its fd 4, each a JSON
message ended by a NUL), spawned by the reactor so that the admin listener under test
keeps serving meanwhile. Enough to open a page, wait for it, click, read it back and
download from it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol


class BrowserError(Exception):
    """The browser answered a command with an error, or went away."""


class _Pipe(ProcessProtocol):
    def __init__(self) -> None:
        self.buffer = b""
        self.waiting: dict[int, Deferred[Any]] = {}
        self.watching: list[tuple[str, Callable[[dict[str, Any]], bool], Deferred[dict[str, Any]]]] = []
        self.ended: Deferred[None] = Deferred()

    def childDataReceived(self, fd: int, data: bytes) -> None:
        if fd != 4:
            return  # its own logging
        self.buffer += data
        *messages, self.buffer = self.buffer.split(b"\0")
        for message in messages:
            answer = json.loads(message)
            if "id" not in answer:
                self._event(answer["method"], answer.get("params", {}))
                continue
            waiting = self.waiting.pop(answer["id"], None)
            if waiting is None:
                continue
            if "error" in answer:
                waiting.errback(BrowserError(answer["error"]))
            else:
                waiting.callback(answer["result"])

    def _event(self, method: str, params: dict[str, Any]) -> None:
        for watch in list(self.watching):
            name, matches, seen = watch
            if name == method and matches(params):
                self.watching.remove(watch)
                seen.callback(params)

    def processEnded(self, reason: Any) -> None:
        for waiting in self.waiting.values():
            waiting.errback(BrowserError("the browser went away"))
        self.ended.callback(None)


class Browser:
    """One headless Chromium; L{open} a page, then L{evaluate} in it."""

    def __init__(self, reactor: Any, executable: str, profile: Path) -> None:
        self._pipe = _Pipe()
        self._next = 0
        self._session: str | None = None
        self._process = reactor.spawnProcess(
            self._pipe, executable,
            [executable, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
             f"--user-data-dir={profile}", "about:blank"],
            env=None, childFDs={0: "w", 1: "r", 2: "r", 3: "w", 4: "r"},
        )

    def _send(self, method: str, params: dict[str, Any], session: str | None = None) -> Deferred[Any]:
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        answered: Deferred[Any] = Deferred()
        self._pipe.waiting[self._next] = answered
        self._process.writeToChild(3, json.dumps(message).encode() + b"\0")
        return answered

    async def open(self, url: str) -> None:
        """A tab on C{url}: answered once the page is committed, so what is evaluated next runs in it."""
        target = await self._send("Target.createTarget", {"url": "about:blank"})
        attached = await self._send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        self._session = attached["sessionId"]
        await self._send("Page.navigate", {"url": url}, self._session)

    def next_event(self, method: str, matches: Callable[[dict[str, Any]], bool] = lambda params: True) -> Deferred[Any]:
        """The next event C{method} whose parameters C{matches} (ask before causing it)."""
        seen: Deferred[Any] = Deferred()
        self._pipe.watching.append((method, matches, seen))
        return seen

    async def downloads_to(self, directory: Path) -> None:
        """Downloads are saved in C{directory} under their own names, and told as events."""
        await self._send("Browser.setDownloadBehavior",
                         {"behavior": "allowAndName", "downloadPath": str(directory), "eventsEnabled": True})

    async def evaluate(self, expression: str) -> Any:
        """C{expression}'s value in the page (a promise is awaited), as JSON gives it."""
        result = await self._send(
            "Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True}, self._session,
        )
        if "exceptionDetails" in result:
            raise BrowserError(result["exceptionDetails"])
        return result["result"].get("value")

    async def close(self) -> None:
        try:
            await self._send("Browser.close", {})
        except BrowserError:
            pass  # gone as it answered
        await self._pipe.ended
