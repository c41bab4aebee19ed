"""Pre-trade risk: the risk engine (limits per scope, trading states, overrides), the kill switch,
and the operator's run-time limit commands. Pure logic on event time; no sockets.

May import: the ground floor (``bridge.core``, ``bridge.protocol``, ``bridge.data``,
``bridge.storage``).
"""
