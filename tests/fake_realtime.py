"""
A fake provider's WebSocket APIs, on Twisted's own WebSocket server (wsproto): the
Realtime API (C{session.created}, then per C{response.create} a response with audio
deltas and a C{response.done} carrying the API reference's usage; an input
transcription per committed buffer) and the Responses API's WebSocket mode. It records
each upgrade's headers and every client message.

A response's C{metadata.mode} picks a behaviour: C{"hang"} (started, never done),
C{"masked"} (a masked frame, which a server must never send), C{"huge"} (a frame
header announcing 17 MiB), C{"vanish"} (the connection closed mid-response, without a close frame).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

from twisted.web.server import Request
from twisted.web.websocket import WebSocketResource, WebSocketTransport

#: The Realtime API reference's response.done usage: gpt-realtime $0.0069656.
REALTIME_USAGE = {
    "total_tokens": 253, "input_tokens": 132, "output_tokens": 121,
    "input_token_details": {"text_tokens": 119, "audio_tokens": 13, "image_tokens": 0, "cached_tokens": 64,
                            "cached_tokens_details": {"text_tokens": 64, "audio_tokens": 0, "image_tokens": 0}},
    "output_token_details": {"text_tokens": 30, "audio_tokens": 91},
}
TRANSCRIPTION_USAGE = {"type": "tokens", "input_tokens": 14, "input_token_details": {"text_tokens": 0, "audio_tokens": 14},
                       "output_tokens": 9, "total_tokens": 23}
RESPONSES_USAGE = {"input_tokens": 900, "input_tokens_details": {"cached_tokens": 512}, "output_tokens": 250,
                   "output_tokens_details": {"reasoning_tokens": 100}, "total_tokens": 1150}
#: An audio delta of about 16 KiB, as a second of audio is.
AUDIO_DELTA = "UklGR" * 3300


@dataclass
class Upgrade:
    path: str
    headers: dict[bytes, list[bytes]]
    messages: list[dict[str, Any]] = field(default_factory=list)
    closed: bool = False


class _Session:
    def __init__(self, sockets: FakeSockets, request: Request) -> None:
        self.sockets = sockets
        self.path = request.path.decode()
        query = {key.decode(): values[0].decode() for key, values in request.args.items()}
        self.model = query.get("model") or query.get("deployment") or "gpt-realtime"
        self.upgrade = Upgrade(self.path, {k.lower(): v for k, v in request.requestHeaders.getAllRawHeaders()})
        sockets.upgrades.append(self.upgrade)
        self.responses = 0
        self.transport: WebSocketTransport | None = None

    @property
    def realtime(self) -> bool:
        return self.path.endswith("/realtime")

    def send(self, event: dict[str, Any]) -> None:
        assert self.transport is not None
        self.transport.sendTextMessage(json.dumps(event))

    def negotiationStarted(self, transport: WebSocketTransport) -> None:
        self.transport = transport

    def negotiationFinished(self) -> None:
        if self.realtime:
            self.send({"type": "session.created", "event_id": "event_1", "session": self._session()})

    def _session(self) -> dict[str, Any]:
        return {"type": "realtime", "object": "realtime.session", "id": "sess_fake", "model": "gpt-realtime"
                if self.model.startswith("dep") else self.model, "instructions": "Be helpful.", "max_output_tokens": "inf",
                "audio": {"input": {"transcription": {"model": "gpt-4o-transcribe"}}}}

    def textMessageReceived(self, message: str) -> None:
        event = json.loads(message)
        self.upgrade.messages.append(event)
        kind = event.get("type")
        if self.path.endswith("/live/sessions"):
            return self._live(kind, event)
        if kind == "session.update":
            self.send({"type": "session.updated", "event_id": "event_2", "session": self._session()})
        elif kind == "input_audio_buffer.commit":
            self.send({"type": "conversation.item.input_audio_transcription.completed", "event_id": "event_3",
                       "item_id": "item_1", "content_index": 0, "transcript": "hello", "usage": TRANSCRIPTION_USAGE})
        elif kind == "response.create":
            self._respond(event)

    def _respond(self, event: dict[str, Any]) -> None:
        self.responses += 1
        body = event.get("response") or {}
        mode = (body.get("metadata") or {}).get("mode")
        response_id = f"resp_{self.responses}"
        assert self.transport is not None
        raw: Any = self.transport
        if self.realtime:
            self.send({"type": "response.created", "event_id": "e", "response": {"id": response_id, "object": "realtime.response",
                                                                               "status": "in_progress"}})
            self.send({"type": "response.output_audio.delta", "event_id": "e", "response_id": response_id,
                       "item_id": "item", "output_index": 0, "content_index": 0, "delta": AUDIO_DELTA})
        else:
            model = event.get("model", "gpt-5")
            self.send({"type": "response.created", "sequence_number": 0,
                       "response": {"id": response_id, "object": "response", "model": model, "status": "in_progress"}})
            self.send({"type": "response.output_text.delta", "sequence_number": 1, "item_id": "msg", "output_index": 0,
                       "content_index": 0, "delta": "Hello", "logprobs": []})
        if mode == "hang":
            return
        wire = raw.transport if hasattr(raw, "transport") else None
        if mode == "masked" and wire is not None:
            payload = b'{"type":"x"}'
            wire.write(b"\x81\x8c" + b"\0\0\0\0" + payload)
            return
        if mode == "huge" and wire is not None:
            wire.write(b"\x81\x7f" + struct.pack("!Q", 17 << 20) + b"x" * 1000)
            return
        if mode == "vanish" and wire is not None:
            wire.loseConnection()  # what was written goes; no close frame follows
            return
        if self.realtime:
            self.send({"type": "response.done", "event_id": "e", "response": {
                "id": response_id, "object": "realtime.response", "status": "completed", "output": [],
                "usage": REALTIME_USAGE}})
        else:
            model = event.get("model", "gpt-5")
            self.send({"type": "response.completed", "sequence_number": 2, "response": {
                "id": response_id, "object": "response", "created_at": 1, "model": model, "status": "completed",
                "output": [], "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "usage": RESPONSES_USAGE}})

    def _live(self, kind: str, event: dict[str, Any]) -> None:
        """
        A Live session: every audio append is 20 s more of session (cumulative), a
        delegation's Responses call ends with its usage, close ends it.
        """
        session = {"id": "live_fake", "object": "live.session", "model": (event.get("session") or {}).get("model", "gpt-live-1")}
        if kind == "session.start":
            self.live_model = session["model"]
            self.send({"type": "session.started", "event_id": "e", "session": session})
            return
        session["model"] = getattr(self, "live_model", "gpt-live-1")
        if kind == "session.input_audio.append":
            self.responses += 1
            usage = {"seconds": 3600 if event.get("audio") == "HOUR" else 20 * self.responses}
            self.send({"type": "session.usage.updated", "event_id": "e", "usage": usage})
            if self.responses == 2:  # the session delegates a task to a Responses model
                done = {"type": "response.completed", "sequence_number": 3, "response": {
                    "id": "resp_d", "object": "response", "model": "gpt-5", "status": "completed", "usage": RESPONSES_USAGE}}
                self.send({"type": "response.event", "event_id": "e", "delegation_id": "d1", "event": done})
        elif kind == "session.close":
            self.send({"type": "session.closed", "event_id": "e", "reason": "close_requested", "session": session,
                       "usage": {"seconds": 20 * self.responses + 0.4}})

    def bytesMessageReceived(self, data: bytes) -> None:
        pass

    def pongReceived(self, payload: bytes) -> None:
        pass

    def connectionLost(self, reason: Any) -> None:
        self.upgrade.closed = True


class FakeSockets:
    """The fake's WebSocket routes: every upgrade recorded, in order."""

    def __init__(self) -> None:
        self.upgrades: list[Upgrade] = []
        self.resource = WebSocketResource(self)  # type: ignore[arg-type]

    def buildProtocol(self, request: Request) -> _Session:
        return _Session(self, request)

    def render(self, request: Request) -> Any:
        return self.resource.render(request)
