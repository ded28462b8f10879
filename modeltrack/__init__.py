"""
modeltrack: a streaming reverse proxy that records the exact cost of every LLM API call.
"""

__version__ = "0.1.0"
