"""
What the running proxy tells about itself: running totals (C{/stats}), Prometheus
metrics, the OpenTelemetry export, the workers' shared totals, and the process log's
format.

May import: L{modeltrack.accounting} and everything below it.
"""
