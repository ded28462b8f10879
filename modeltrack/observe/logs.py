"""
How the process's log is written: one line per event, as text or as one flat JSON
object, and never with an exception's text or traceback values (see
L{modeltrack.failures}): Twisted's own failures (an unhandled error in a callback, a
request finished with its producer still registered) carry messages built from
request targets, which can hold keys.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

from twisted.logger import FileLogObserver, ILogObserver, formatEvent
from twisted.python.logfile import LogFile

from modeltrack.failures import where

_SCALARS = (str, int, float, bool, type(None))


def _time(event: dict[str, Any]) -> str:
    moment = datetime.fromtimestamp(event.get("log_time") or 0, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _message(event: dict[str, Any]) -> str:
    message = formatEvent(event) if event.get("log_format") is not None else ""
    failure = event.get("log_failure")
    if failure is not None:
        problem = f"{type(failure.value).__name__} at {where(failure)}"
        message = f"{message}: {problem}" if message else problem
    return message


def flat_record(event: dict[str, Any]) -> dict[str, Any]:
    """
    One log event as a flat object: C{time} (RFC 3339, UTC), C{level}, C{namespace},
    C{message} (rendered), then the event's own fields that are plain values (objects,
    whose text nobody chose for a log, are left out).
    """
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": _time(event),
        "level": level.name if level is not None else "info",
        "namespace": event.get("log_namespace") or "-",
        "message": _message(event),
    }
    failure = event.get("log_failure")
    if failure is not None:
        record["error_class"] = type(failure.value).__name__
    for key, value in event.items():
        if key.startswith(("log_", "__")) or key in record or key in ("format", "message", "isError", "system", "time"):
            continue
        if isinstance(value, _SCALARS):
            record[key] = value
    return record


def _json_line(event: dict[str, Any]) -> str:
    return json.dumps(flat_record(event), ensure_ascii=False, default=str) + "\n"


def _text_line(event: dict[str, Any]) -> str:
    level = event.get("log_level")
    namespace = event.get("log_namespace") or "-"
    return f"{_time(event)} [{namespace}#{level.name if level else 'info'}] {_message(event)}\n"


class LogFormat(StrEnum):
    """
    How each log event is written (C{--log-format}).
    """

    TEXT = "text"  # one line: time, namespace, level, message
    JSON = "json"  # one flat JSON object per line, for log shippers


def observer(log_format: LogFormat, out: IO[str] | LogFile) -> ILogObserver:
    """
    The process's log observer: each event as C{log_format}, to C{out}.
    """
    return FileLogObserver(out, _json_line if LogFormat(log_format) is LogFormat.JSON else _text_line)  # type: ignore[arg-type]  # LogFile writes str


def destination(path: Path | None) -> IO[str] | LogFile:
    """
    Where the log goes: standard output, or the file twistd's C{--logfile} names,
    rotated as twistd rotates its own (every MB, and on SIGUSR1: L{Signals}).
    """
    return sys.stdout if path is None else LogFile.fromFullPath(str(path))
