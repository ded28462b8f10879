"""
Acting on cost in the request path: budgets with reservations, routing to cheaper
models, and a tenant-safe response cache, each configured by a file in the data dir.
"""
