"""Serving PEARL with Triton: request parsing and validation, word lists, the model repository, the server."""
