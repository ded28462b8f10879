"""
OpenAI's WebSocket APIs, read beside the relay for what they bill: the Realtime API
(one C{response.done} per response, whatever its status; input transcriptions billed
apart) and the Responses API's WebSocket mode (one C{response.completed},
C{incomplete} or C{failed} per response). A meter sees only the messages whose type it
reads (L{ISocketMeter.reads}): the audio deltas, most of the bytes, pass unparsed.

It also says what a response may cost before it is asked for (L{Reservation}): the
relay holds each C{response.create} until the controls have reserved that much.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from zope.interface import Attribute, Interface, implementer

from modeltrack.pricing.usage import Reading, Usage, dig, text
from modeltrack.providers.openai_media import transcription_usage
from modeltrack.providers.openai_usage import read, realtime_usage, responses_usage

#: The most a Realtime response can put out (the API's own maximum).
REALTIME_MAX_OUTPUT_TOKENS = 4096


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


class Billed(NamedTuple):
    """
    One thing a session was billed for, as its server event said: a response (C{key}
    its id, which settles the reservation made for it) or an input transcription
    (C{key} L{None}); C{failed}: it ended in failure.
    """

    key: str | None
    reading: Reading
    failed: bool = False


class Reservation(NamedTuple):
    """
    What a client's C{response.create} may cost: the model, and either the usage
    that bounds it (C{bound}) or the request body the controls bound as they bound
    an HTTP call (C{body}, C{size}: a Responses request).
    """

    model: str | None
    bound: Usage | None = None
    body: dict[str, Any] | None = None
    size: int = 0


class ISocketMeter(Interface):
    """
    Reads one WebSocket session's events: what the server said it billed, what the
    client asks for.
    """

    model = Attribute("The session's model, as last named (by the upgrade's URL, the session, a response).")
    session_id = Attribute("The provider's id for the session, once it has named one.")
    creates = Attribute("The client events that start something billed: each is held for its reservation.")
    exhausted = Attribute("The session has used all that was reserved for it (a Live session's seconds).")

    def reads(event_type: bytes) -> bool:
        """Whether a server message of this type is parsed (every other is relayed unread)."""

    def server_event(event_type: bytes, obj: dict[str, Any], size: int) -> tuple[str | None, list[Billed]]:
        """
        A server message read: the id of a response it starts, if it does, and what
        it bills.
        """

    def client_message(size: int) -> None:
        """A client's text message of C{size} bytes went upstream: the context grows by it."""

    def reservation(obj: dict[str, Any], size: int) -> Reservation:
        """What the client's C{response.create} (C{obj}, C{size} bytes) may cost."""

    def unfinished(key: str) -> Reading:
        """What is known of a response started and never billed (the session ended first)."""


@implementer(ISocketMeter)
class RealtimeMeter:
    """
    A Realtime session. The session names the model (a response does not); every
    response is billed for its whole context again (cached tokens cheaper), so a
    response's input is bounded by the last response's input and output and every
    byte the client sent since (a token always covers at least one byte, an audio
    token many), priced at the audio rates, the dearest; its output by its
    C{max_output_tokens}, else the session's, else the API's maximum.
    """

    _READ = frozenset((
        b"session.created", b"session.updated", b"response.created", b"response.done",
        b"conversation.item.input_audio_transcription.completed", b"error",
    ))

    creates = frozenset(("response.create",))
    exhausted = False

    def __init__(self, model: str | None) -> None:
        self.model = model
        self.session_id: str | None = None
        self.transcription_model: str | None = None
        self._max_output: int | None = None
        #: Tokens the provider may hold in context at most, as far as the proxy knows.
        self._context = 0

    def reads(self, event_type: bytes) -> bool:
        return event_type in self._READ

    def server_event(self, event_type: bytes, obj: dict[str, Any], size: int) -> tuple[str | None, list[Billed]]:
        if event_type in (b"session.created", b"session.updated"):
            self._session(obj.get("session"), size)
        elif event_type == b"response.created":
            return text(dig(obj, "response", "id")), []
        elif event_type == b"response.done":
            response = _object(obj.get("response"))
            reading = Reading(model=self.model)
            raw = response.get("usage")
            if isinstance(raw, dict):
                reading.usage, reading.final = realtime_usage(raw), True
                self._context = reading.usage.input_tokens + reading.usage.output_tokens
            failed = response.get("status") == "failed"
            if failed:
                reading.error_type = text(dig(response, "status_details", "error", "code")) or "failed"
            return None, [Billed(text(response.get("id")), reading, failed)]
        elif event_type == b"conversation.item.input_audio_transcription.completed":
            raw = obj.get("usage")
            reading = Reading(model=self.transcription_model)
            if isinstance(raw, dict):
                reading.usage, reading.final = transcription_usage(raw), True
            return None, [Billed(None, reading)]
        return None, []

    def _session(self, session: Any, size: int) -> None:
        if not isinstance(session, dict):
            return
        self.model = text(session.get("model")) or self.model
        self.session_id = self.session_id or text(session.get("id"))
        transcription = dig(session, "audio", "input", "transcription", "model")
        self.transcription_model = text(transcription) or self.transcription_model
        limit = session.get("max_output_tokens", session.get("max_response_output_tokens"))
        self._max_output = limit if type(limit) is int and limit > 0 else None
        # Its instructions and tools are context the client may not have sent.
        self._context += size

    def client_message(self, size: int) -> None:
        self._context += size

    def reservation(self, obj: dict[str, Any], size: int) -> Reservation:
        limit = dig(obj, "response", "max_output_tokens")
        output = limit if type(limit) is int and limit > 0 else self._max_output or REALTIME_MAX_OUTPUT_TOKENS
        output = min(output, REALTIME_MAX_OUTPUT_TOKENS)
        context = self._context
        bound = Usage(
            input_tokens=context, output_tokens=output,
            extra={"input_audio_tokens": context, "output_audio_tokens": output},
        )
        return Reservation(self.model, bound=bound)

    def unfinished(self, key: str) -> Reading:
        return Reading(model=self.model)


_RESPONSE_ENDS = frozenset((b"response.completed", b"response.incomplete", b"response.failed"))


@implementer(ISocketMeter)
class ResponsesSocketMeter:
    """
    The Responses API over a WebSocket: each C{response.create} carries a whole
    Responses request (bounded as the HTTP call is), each response ends with the
    event the HTTP stream ends with.
    """

    _READ = frozenset((b"response.created", *_RESPONSE_ENDS, b"error"))
    creates = frozenset(("response.create",))
    exhausted = False

    def __init__(self, model: str | None) -> None:
        self.model = model
        self.session_id: str | None = None

    def reads(self, event_type: bytes) -> bool:
        return event_type in self._READ

    def server_event(self, event_type: bytes, obj: dict[str, Any], size: int) -> tuple[str | None, list[Billed]]:
        response = _object(obj.get("response"))
        if event_type == b"response.created":
            self.model = text(response.get("model")) or self.model
            return text(response.get("id")), []
        if event_type in _RESPONSE_ENDS:
            reading = read(response, responses_usage)
            reading.model = reading.model or self.model
            failed = event_type == b"response.failed"
            if failed:
                reading.error_type = text(dig(response, "error", "code")) or "failed"
            return None, [Billed(text(response.get("id")), reading, failed)]
        return None, []

    def client_message(self, size: int) -> None:
        pass

    def reservation(self, obj: dict[str, Any], size: int) -> Reservation:
        body = {key: value for key, value in obj.items() if key != "type"}
        model = text(body.get("model")) or self.model
        return Reservation(model, body=body, size=size)

    def unfinished(self, key: str) -> Reading:
        return Reading(model=self.model)


#: The longest a Live session is reserved for at its start (an hour of audio); a session
#: held to a block budget is closed when it has used that much.
LIVE_RESERVED_SECONDS = 3600
_LIVE = "live session"  # the key of a Live session's one billed thing


@implementer(ISocketMeter)
class LiveMeter:
    """
    An OpenAI Live session (C{/v1/live/sessions}): billed per second of the session,
    reported cumulatively (never summed) by C{session.usage.updated} and, finally,
    C{session.closed}: one event per session. The Responses calls it delegates to are
    billed apart, from the C{response.event} that ends each (one event each, at that
    model's rates). A session is reserved at its C{session.start} for
    L{LIVE_RESERVED_SECONDS}, and is exhausted once it has used them.
    """

    _READ = frozenset((b"session.started", b"session.usage.updated", b"session.closed", b"response.event"))
    creates = frozenset(("session.start",))

    def __init__(self, model: str | None) -> None:
        self.model = model
        self.session_id: str | None = None
        self._seconds = 0
        self._reserved = 0
        self._closed = False

    @property
    def exhausted(self) -> bool:
        return bool(self._reserved) and self._seconds >= self._reserved

    def reads(self, event_type: bytes) -> bool:
        return event_type in self._READ

    def server_event(self, event_type: bytes, obj: dict[str, Any], size: int) -> tuple[str | None, list[Billed]]:
        session = _object(obj.get("session"))
        self.model = text(session.get("model")) or self.model
        self.session_id = self.session_id or text(session.get("id"))
        if event_type == b"response.event":
            inner = _object(obj.get("event"))
            if inner.get("type") in ("response.completed", "response.incomplete", "response.failed"):
                response = _object(inner.get("response"))
                return None, [Billed(None, read(response, responses_usage), inner.get("type") == "response.failed")]
            return None, []
        usage = _object(obj.get("usage"))
        if type(usage.get("seconds")) in (int, float):
            self._seconds = max(self._seconds, math.ceil(usage["seconds"]))
        if event_type == b"session.started":
            return _LIVE, []
        if event_type == b"session.closed" and not self._closed:
            self._closed = True
            return None, [Billed(_LIVE, self._reading(final=True))]
        return None, []

    def _reading(self, final: bool) -> Reading:
        return Reading(model=self.model, usage=Usage(extra={"audio_seconds": self._seconds}), final=final)

    def client_message(self, size: int) -> None:
        pass

    def reservation(self, obj: dict[str, Any], size: int) -> Reservation:
        self._reserved = LIVE_RESERVED_SECONDS
        model = text(dig(obj, "session", "model")) or self.model
        return Reservation(model, bound=Usage(extra={"audio_seconds": LIVE_RESERVED_SECONDS}))

    def unfinished(self, key: str) -> Reading:
        # Ended without session.closed: the seconds last reported, a floor of what is billed.
        return self._reading(final=False)


def error_event(code: str, message: str) -> dict[str, Any]:
    """
    A server C{error} event in both APIs' shape, as the SDKs show it.
    """
    return {"type": "error", "error": {"type": "invalid_request_error", "code": code, "message": message, "param": None}}
