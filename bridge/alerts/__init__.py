"""The notifier (``nt8bridge alerts``): reads a sidecar's event stream and storage, and sends what an
operator must know (kill events, lost sessions, stale feeds, reconciliation breaks, limit breaches and
overrides, drift, a broken audit chain) to webhooks and e-mail, deduplicated and rate limited.

May import: everything below the NT8 host (the ground floor, ``strategies``, ``ml``, ``reports``,
``bridge.risk``, ``bridge.audit``, ``bridge.engine``, ``bridge.transport``). Never NT8 hosting or the CLI.
"""
