"""Wire protocol v1 between NT8 and the sidecar: the message dataclasses (``messages``) and the
binary codec (``codec``); docs/protocol.md is the specification, tests/vectors/ its golden vectors.

May import: nothing of the project. Everything else may import it.
"""
