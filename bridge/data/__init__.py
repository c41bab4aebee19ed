"""Market data files: readers and writers of NinjaTrader 8 text exports (tick, tick replay, minute
and day bars) and synthetic sessions calibrated on the team's real files.

Part of the ground floor rather than of ``bridge.nt8`` because training, research and the data
checks read NT8 exports without hosting NT8. May import: ``bridge.core`` and ``bridge.protocol``.
"""
