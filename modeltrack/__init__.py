"""
modeltrack: a streaming reverse proxy that records the exact cost of every LLM API call.

Its packages, top to bottom (a module imports only from its own package or one below;
ARCHITECTURE.md draws them): L{ops} and L{cli}; L{web} and L{admin}; L{observe};
L{accounting}; L{controls}; L{store}; L{providers}; L{pricing}; and L{failures}.
"""

__version__ = "0.1.0"
