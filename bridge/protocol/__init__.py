"""Wire protocol v1 between NT8 and the sidecar: the message dataclasses (``messages``), the
binary codec (``codec``) and remote mode's HMAC trailer and session keys (``auth``); docs/protocol.md
is the specification, tests/vectors/ its golden vectors.

May import: nothing of the project. Everything else may import it.
"""
