"""
The HTTP side of modeltrack: the listening site, the proxy resource and the upstream agent.
"""
