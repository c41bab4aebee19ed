"""The operator console: a web application in its own process (``nt8bridge console``) that shows a
running sidecar live, from its event stream (bridge/transport/events.py), and its history, from
storage; the kill switch, enable and limit changes go through the sidecar's control channel.

May import: everything below the NT8 host (the ground floor, ``strategies``, ``ml``, ``reports``,
``bridge.risk``, ``bridge.audit``, ``bridge.engine``, ``bridge.transport``). Never NT8 hosting or the CLI.
"""
