"""
One module per wire dialect: where a request names its model and stream flag, how the
provider reports usage in a body or a stream, and what its errors look like.
"""
