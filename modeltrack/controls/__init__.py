"""
Acting on cost in the request path: the gate where the controls meet a call, budgets
(in this process, or in Redis with leases), keys and who is calling, routing to
cheaper models, the response cache and budget alerts, each configured by a file in the
data dir.

May import: L{modeltrack.store}, L{modeltrack.providers}, L{modeltrack.pricing},
L{modeltrack.failures}.
"""
