"""
The providers the proxy knows, in the order a request's headers are matched against
them for a path several serve (the last is the default). Adding a provider: its module,
and its line here.
"""

from __future__ import annotations

from modeltrack.providers import anthropic, openai
from modeltrack.providers.dialect import Dialect

DIALECTS: tuple[Dialect, ...] = (
    anthropic.DIALECT,
    openai.DIALECT,
)
BY_NAME = {dialect.name: dialect for dialect in DIALECTS}
