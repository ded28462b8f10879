"""
What a provider module declares: its L{Dialect} (how callers name it, the error shape,
which headers carry a caller's key) and its L{Endpoint}s (the routes it serves and how
each is metered). The route table (L{modeltrack.providers.routes}) and the pipeline
(L{modeltrack.web.proxy}) read only these, so a new provider is its own module, one line
in L{modeltrack.providers.registry}, and its tests.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from twisted.web.http_headers import Headers

from modeltrack.failures import NOT_A_FORM, NOT_A_JSON_OBJECT
from modeltrack.pricing.usage import Reading, Usage, text
from modeltrack.providers.forms import read_form
from modeltrack.providers.meter import BodyMeter, FrameMeter, IMeter, RelayOnly, SSEMeter


def model_and_stream(body: dict[str, Any]) -> tuple[str | None, bool]:
    """
    Where the OpenAI and Anthropic APIs name a call's model and ask for a stream: the
    body's C{model} and C{stream: true}.
    """
    return text(body.get("model")), body.get("stream") is True


#: Methods a relayed route may use (the APIs' own).
_RELAYED_METHODS = frozenset((b"GET", b"POST", b"PUT", b"PATCH", b"DELETE"))
#: A relayed path: segments of unreserved characters (and the ones the APIs use in
#: ids), none of them "." or "..", no empty segment, no percent-encoding (which could
#: hide a dot segment or a slash from this check and not from the upstream).
_RELAYED_PATH = re.compile(r"(/(?!\.{1,2}(?:/|$))[A-Za-z0-9._~:@!$&'()*+,;=-]+)+/?")


def relayable(method: bytes, path: str) -> bool:
    """
    May C{method path} be relayed untouched: an API method, and a plain path?
    """
    return method in _RELAYED_METHODS and _RELAYED_PATH.fullmatch(path) is not None


class Billable(NamedTuple):
    """
    A relayed route the provider bills but whose answer says nothing of what: a
    fine-tuning job, vector store storage, a WebRTC call.

    @ivar pattern: the paths it covers (below the dialect's prefix).
    @ivar route: its name in events (C{/v1/fine_tuning/jobs}).
    @ivar basis: what it is billed by, in words (the event's C{price_note}).
    """

    method: bytes
    pattern: re.Pattern[str]
    route: str
    basis: str


def relayed_endpoint(dialect: Dialect, method: bytes, path: str, segments: int) -> Endpoint:
    """
    The unmetered endpoint relaying C{path}, its route named for its first C{segments}
    segments (C{/v1/files}), or for the billable route it is (L{Dialect.billable}).
    """
    for billable in dialect.billable:
        if method == billable.method and billable.pattern.fullmatch(path):
            return Endpoint(dialect.name, billable.route, dialect.error_body, method=method, metered=False, billing=billable.basis)
    route = "/".join(path.split("/")[: segments + 1])
    return Endpoint(dialect.name, route, dialect.error_body, method=method, metered=False)


class CallRequest(NamedTuple):
    """
    A metered request, read once.

    @ivar body: its JSON object.
    @ivar data: the bytes to forward: the client's, or the body rewritten to ask for
        usage the client did not ask for.
    @ivar model: the model it asks for (the path's, where the path names one).
    @ivar streaming: it asks for a stream.
    @ivar asked_for_usage: the proxy asked for the usage: the provider's usage report
        is read, and kept from the client.
    @ivar measured: what the request itself says the call is billed by, for an answer
        that does not (speech's characters, an upload's seconds of audio).
    """

    body: dict[str, Any]
    data: bytes
    model: str | None
    streaming: bool
    asked_for_usage: bool
    measured: Usage | None = None


@dataclass(frozen=True, slots=True)
class Endpoint:
    """
    One upstream API route.

    @ivar metered: calls here cost money and each leaves a cost event.
    @ivar billing: for a relayed route the provider bills though its answer cannot be
        metered, the basis it is billed by; each call leaves an unpriced cost event.
    @ivar read_body: reads usage from a non-streaming response body.
    @ivar stream_meter: builds the meter for an event-stream response; it is called
        with C{strip=True} when the proxy asked for usage the client did not.
    @ivar read_request: the model and stream flag of a request body.
    @ivar ask_for_usage: for a streamed call, makes the request body ask for usage
        the provider would not report otherwise; true if it changed the body (the
        added usage is then kept from the client, which sees the stream it asked for).
    @ivar errors: the provider's error shape: C{(error type, message) -> body}.
    @ivar deployment: the deployment the client path named (Azure's classic paths).
    @ivar model_names_deployment: the body's C{model} is a deployment name (Azure's v1
        paths), not the model the call is priced by.
    @ivar model: the model the client path names (Bedrock, Gemini, Vertex): the call's
        requested model.
    @ivar priced_by_path: the call is priced by L{model} whatever the answer names
        (Bedrock: the profile in the path sets the price; the answer omits it).
    @ivar streams: the path itself asks for a stream (C{converse-stream},
        C{:streamGenerateContent}).
    @ivar stream_type: the content type of the stream L{stream_meter} reads.
    @ivar read_headers: what a response's headers report, given them and its status:
        an error type or usage its body does not (Bedrock names errors and counts some
        models' tokens in headers); L{None} if they say nothing.
    @ivar bound: the most a request can use, from its body and size, where the
        general bound (its bytes in, its output limit out) does not hold (images).
    @ivar form: requests are multipart/form-data (audio, image edits): read for their
        text fields, the files streamed past.
    @ivar measure_audio: the form's file part whose audio's length (whole seconds up)
        bills a call whose answer says nothing (a transcript as plain text).
    @ivar unmetered_answer: why an answer neither JSON nor a stream cannot be metered
        (a transcript as plain text carries no usage): its call is unpriced with it.
    @ivar request_usage: the usage an answer of neither kind (raw audio) is billed by,
        read from the request (speech: its input's characters), or L{None}.
    @ivar socket: for a WebSocket route (C{GET} and an upgrade), makes the meter of
        one session, given the model its URL names (L{openai_sockets.ISocketMeter}).
    @ivar at_text_rate: dimensions this route's models bill at the rate of the tokens
        they are part of when they have no rate of their own (gpt-image-1's output rate
        is its image rate).
    """

    provider: str
    path: str
    errors: Callable[[str, str], dict[str, Any]]
    method: bytes = b"POST"
    metered: bool = True
    billing: str | None = None
    read_body: Callable[[dict[str, Any]], Reading] | None = None
    stream_meter: Callable[..., SSEMeter | FrameMeter] | None = None
    read_request: Callable[[dict[str, Any]], tuple[str | None, bool]] = model_and_stream
    ask_for_usage: Callable[[dict[str, Any]], bool] | None = None
    deployment: str | None = None
    model_names_deployment: bool = False
    model: str | None = None
    priced_by_path: bool = False
    streams: bool = False
    stream_type: bytes = b"text/event-stream"
    read_headers: Callable[[Headers, int], Reading | None] | None = None
    bound: Callable[[dict[str, Any], int], Usage] | None = None
    at_text_rate: frozenset[str] = frozenset()
    form: bool = False
    measure_audio: str | None = None
    unmetered_answer: str | None = None
    request_usage: Callable[[dict[str, Any]], Usage | None] | None = None
    socket: Callable[[str | None], Any] | None = None

    def error_body(self, error_type: str, message: str) -> dict[str, Any]:
        return self.errors(error_type, message)

    def meter_for(self, content_type: bytes, call: CallRequest | None = None) -> IMeter:
        """
        The meter for an answer of C{content_type} to C{call} (the request as read,
        L{None} for an error answer: where the proxy asked for the usage, it is kept
        from the client; an answer with no usage in it, raw audio or plain text, is
        billed by what the request measured).
        """
        if not self.metered:
            return RelayOnly()
        if self.stream_meter is not None and content_type.startswith(self.stream_type):
            return self.stream_meter(strip=call is not None and call.asked_for_usage)
        if self.read_body is not None and (self.unmetered_answer is None or content_type.startswith(b"application/json")):
            return BodyMeter(self.read_body)
        meter = RelayOnly(self.unmetered_answer)
        if call is not None and call.measured is not None:
            meter.reading.usage, meter.reading.final = call.measured, True
        return meter

    @property
    def unreadable(self) -> str:
        """What a request body that L{read_call} cannot read should have been."""
        return NOT_A_FORM if self.form else NOT_A_JSON_OBJECT

    def read_call(self, data: bytes, content_type: bytes = b"") -> CallRequest | None:
        """
        The model and stream flag of a request body; for a stream, the body asks for
        its usage if the client did not. L{None} if the body is not a JSON object (a
        form, for a L{form} route: its text fields are then the body).
        """
        if self.form:
            form = read_form(data, content_type, self.measure_audio)
            if form is None:
                return None
            fields, seconds = form
            measured = None if seconds is None else Usage(extra={"audio_seconds": math.ceil(seconds)})
            streaming = fields.get("stream") == "true" or self.streams
            return CallRequest(dict(fields), data, self.model or fields.get("model"), streaming, False, measured)
        try:
            obj = json.loads(data)
        except ValueError:
            return None
        if not isinstance(obj, dict):
            return None
        model, streaming = self.read_request(obj)
        streaming = streaming or self.streams
        asked = streaming and self.ask_for_usage is not None and self.ask_for_usage(obj)
        if asked:
            data = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
        measured = self.request_usage(obj) if self.request_usage is not None else None
        return CallRequest(obj, data, self.model if self.model is not None else model, streaming, asked, measured)


@dataclass(frozen=True, slots=True)
class Origin:
    """
    The option that names a provider's origin (its C{MODELTRACK_*} fallback is the
    option's name in capitals, C{openai-url}: C{MODELTRACK_OPENAI_URL}).

    @ivar default: the origin served when the option is not given; L{None}: the
        provider is served only once it is given.
    @ivar about: what the option names, for its help.
    """

    option: str
    default: str | None
    about: str


@dataclass(frozen=True, slots=True)
class Region:
    """
    The option that names a provider's region, and with it its origin.

    @ivar pattern: what a region looks like.
    @ivar origin: the origin a region names (C{{region}} in it), unless the origin's
        own option is given.
    @ivar kind: what a region is, for an error (C{an AWS region (e.g. us-east-1)}).
    """

    option: str
    pattern: re.Pattern[str]
    origin: str
    about: str
    kind: str


@dataclass(frozen=True, slots=True)
class Signing:
    """
    The flag that makes the proxy sign a provider's calls with its own credentials
    (AWS SigV4 for C{service}, in the provider's region): its callers must then be
    named keys, since the proxy's identity pays.
    """

    option: str
    service: str
    about: str


@dataclass(frozen=True, slots=True)
class Dialect:
    """
    One provider's API as the proxy serves it, and the options an operator gives it.

    @ivar name: the provider in events and options (C{openai}, C{anthropic}).
    @ivar prefix: the client path prefix that names it explicitly (C{/openai}).
    @ivar endpoints: the routes it serves.
    @ivar error_body: its error shape.
    @ivar credential_headers: the request headers that carry a caller's key (lower case).
    @ivar claims: whether a request's headers say it speaks this dialect, for a path
        more than one provider serves (C{/v1/models}); L{None} for the default.
    @ivar relayed: path prefixes under which every other path of the provider's API
        (files, batches, moderations, ...) is relayed untouched, unmetered.
    @ivar by_prefix_only: reached only under its prefix (an upstream named by the
        operator), never by a bare path.
    @ivar route: for paths the table cannot list (a deployment name in them): the
        endpoint and upstream path for C{(method, path)} under the prefix, or L{None}.
    @ivar price_provider: genai-prices' id for the provider, where it is not C{name}
        (Bedrock is C{aws}).
    @ivar credential_query: a query parameter that carries a caller's key (Gemini's
        C{key}).
    @ivar origin: the option naming its origin (L{None}: an operator's upstream,
        whose origin comes with its name).
    @ivar region: the option naming its region, if its origin follows from one.
    @ivar signing: the flag for signing its calls with the proxy's own credentials.
    @ivar billable: its relayed routes that are billed but cannot be metered.
    """

    name: str
    prefix: str
    endpoints: tuple[Endpoint, ...]
    error_body: Callable[[str, str], dict[str, Any]]
    credential_headers: tuple[bytes, ...]
    claims: Callable[[Headers], bool] | None = None
    relayed: tuple[str, ...] = ()
    by_prefix_only: bool = False
    route: Callable[[bytes, str], tuple[Endpoint, str] | None] | None = None
    price_provider: str | None = None
    credential_query: bytes | None = None
    origin: Origin | None = None
    region: Region | None = None
    signing: Signing | None = None
    billable: tuple[Billable, ...] = ()

    @property
    def serves_sockets(self) -> bool:
        """Some of its routes are WebSockets (L{Endpoint.socket})."""
        return any(endpoint.socket is not None for endpoint in self.endpoints)
