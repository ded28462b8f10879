"""
The twistd plugin's entry points: C{Options} and C{makeService}.
"""

from __future__ import annotations

from typing import Any

from modeltrack.ops.options import Options, ProxyOptions
from modeltrack.ops.service import ModeltrackService

__all__ = ["Options", "makeService"]


def makeService(options: ProxyOptions, reactor: object = None) -> Any:
    if reactor is None:
        from twisted.internet import reactor
    settings = options.settings
    if settings.workers > 1 and not settings.inherited:
        # Several workers, and this is not one: bind, start and supervise them.
        from modeltrack.ops.workers import Supervisor

        return Supervisor(settings, reactor)
    return ModeltrackService(settings, reactor)
