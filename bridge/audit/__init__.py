"""The record of what happened: the tamper-evident audit chain, its journal and trail, the recorder
that turns pipeline events into storage rows, and reconciliation of the sidecar's ledger with NT8.

May import: the ground floor (``bridge.core``, ``bridge.protocol``, ``bridge.data``,
``bridge.storage``).
"""
