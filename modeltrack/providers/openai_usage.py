"""
OpenAI's usage objects in one normalised shape: Chat's C{prompt_tokens} and
C{completion_tokens}, the Responses and Images APIs' C{input_tokens} and
C{output_tokens}, their details (cached, reasoning, audio and image tokens), and the
tier that served the call.
"""

from __future__ import annotations

from typing import Any

from modeltrack.pricing.usage import Reading, Usage, count, dig, extras, text


class _UsageReader:
    """
    Chat calls its counts C{prompt_tokens}/C{completion_tokens}, Responses
    C{input_tokens}/C{output_tokens}; the details objects follow the same names. Audio
    and image tokens (audio and image models) are kept apart: they have rates of their
    own. (The field names are made once: this runs once a call.)
    """

    def __init__(self, inputs: str, outputs: str, details: str = "tokens_details") -> None:
        self._inputs, self._input_details = f"{inputs}_tokens", f"{inputs}_{details}"
        self._outputs, self._output_details = f"{outputs}_tokens", f"{outputs}_{details}"

    def __call__(self, raw: dict[str, Any]) -> Usage:
        input_details = raw.get(self._input_details)
        output_details = raw.get(self._output_details)
        if not isinstance(input_details, dict):
            input_details = {}
        if not isinstance(output_details, dict):
            output_details = {}
        usage = Usage(
            input_tokens=count(raw.get(self._inputs)),
            cache_read_tokens=count(input_details.get("cached_tokens")),
            cache_write_tokens=count(input_details.get("cache_write_tokens")),
            output_tokens=count(raw.get(self._outputs)),
            reasoning_tokens=count(output_details.get("reasoning_tokens")),
        )
        # Most answers have no audio or image tokens, or report them as 0.
        if (
            input_details.get("audio_tokens") or input_details.get("image_tokens") or input_details.get("cached_tokens_details")
            or output_details.get("audio_tokens") or output_details.get("image_tokens")
        ):
            extra: dict[str, int] = {}
            extras(extra, input_details, _INPUT_MODALITIES)
            extras(extra, input_details.get("cached_tokens_details"), _CACHED_MODALITIES)
            extras(extra, output_details, _OUTPUT_MODALITIES)
            cached = input_details.get("cached_tokens_details")
            if usage.cache_read_tokens and isinstance(cached, dict):
                # Cached tokens and audio (or image) input overlap: how many cached
                # tokens were audio must be said, 0 included, for the split to be priced.
                for (source, name), (_, given) in zip(_CACHED_MODALITIES, _INPUT_MODALITIES, strict=True):
                    if extra.get(given) and source in cached:
                        extra.setdefault(name, count(cached[source]))
            usage.extra = extra or None
        return usage


_INPUT_MODALITIES = (("audio_tokens", "input_audio_tokens"), ("image_tokens", "input_image_tokens"))
_CACHED_MODALITIES = (("audio_tokens", "cache_audio_read_tokens"), ("image_tokens", "cache_image_read_tokens"))
_OUTPUT_MODALITIES = (("audio_tokens", "output_audio_tokens"), ("image_tokens", "output_image_tokens"))
_CHAT_USAGE = _UsageReader("prompt", "completion")
_RESPONSES_USAGE = _UsageReader("input", "output")
#: The Realtime API's: C{input_token_details} (singular), cached tokens by modality.
_REALTIME_USAGE = _UsageReader("input", "output", "token_details")


def chat_usage(raw: dict[str, Any]) -> Usage:
    """
    Chat and legacy Completions usage (also Embeddings, which has only prompt tokens).
    """
    return _CHAT_USAGE(raw)


def responses_usage(raw: dict[str, Any]) -> Usage:
    return _RESPONSES_USAGE(raw)


def realtime_usage(raw: dict[str, Any]) -> Usage:
    return _REALTIME_USAGE(raw)


def served(reading: Reading, obj: dict[str, Any]) -> None:
    """
    The tier that actually served the request, as the response reports it: it is
    also what selects the price.
    """
    tier = text(obj.get("service_tier"), 32)
    reading.price_context = reading.served = {"service_tier": tier} if tier else {}


def read(obj: dict[str, Any], usage_reader: Any) -> Reading:
    reading = Reading(model=text(obj.get("model")))
    served(reading, obj)
    error = obj.get("error")
    if error:
        reading.error_type = text(dig(error, "type")) or text(dig(error, "code")) or "error"
    raw = obj.get("usage")
    if isinstance(raw, dict):
        reading.usage = usage_reader(raw)
        reading.final = True
    return reading


def read_chat_body(obj: dict[str, Any]) -> Reading:
    return read(obj, chat_usage)


def read_responses_body(obj: dict[str, Any]) -> Reading:
    return read(obj, responses_usage)
