"""
What lands on disk: the data dir's layout and modes, the event log (segments, the
writer thread, the fsync policy), the SQLite index of the log and the child process
that keeps it current.

May import: L{modeltrack.providers}, L{modeltrack.pricing}, L{modeltrack.failures}.
"""
