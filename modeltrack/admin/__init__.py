"""
The admin side: its own listener with the JSON API, /metrics and the dashboard.
"""
