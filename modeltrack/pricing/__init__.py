"""
What a call used and what that costs: L{Usage} and L{Reading} (one normalised shape for
every provider's counts) and the price book (genai-prices, C{pricing.json} overrides).
Below the providers, whose meters produce readings, and below the controls, which
price a call's worst case before it is forwarded.

May import: L{modeltrack.failures} only.
"""
