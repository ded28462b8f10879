"""
The process: twistd's options turned into L{Settings}, the service tree that builds
and starts the parts in a declared order, signals and limits, the worker supervisor,
systemd's notifications, and the twistd plugin's entry points.

May import: every package but L{modeltrack.cli}.
"""
