"""
Accounting: a finished call becomes its cost event and its L{CallRecord}, built in one
place (L{modeltrack.accounting.accountant}) and handed to the sinks; batch results go
the same way; the log is held against the providers' own bills (reconcile).

May import: L{modeltrack.controls}, L{modeltrack.store}, L{modeltrack.providers},
L{modeltrack.pricing}, L{modeltrack.failures}.
"""
