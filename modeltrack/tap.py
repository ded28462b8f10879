"""
The twistd plugin's entry points: C{Options} and C{makeService}.
"""

from __future__ import annotations

from modeltrack.options import Options
from modeltrack.service import ModeltrackService

__all__ = ["Options", "makeService"]


def makeService(options: Options, reactor: object = None) -> ModeltrackService:
    if reactor is None:
        from twisted.internet import reactor
    return ModeltrackService(options.settings, reactor)
