"""
The admin side: its own listener with the JSON API, /metrics and the dashboard.

May import: L{modeltrack.observe} and everything below it; never L{modeltrack.web}.
"""
