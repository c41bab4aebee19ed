"""The ground floor: domain facts every package may use.

Owns the instrument master (contract specs, trading hours, tick grid, NT8 contract names), market
state and time bars, the configuration schema and its loading, risk limits as configured, the
errors that cross package lines, and the per-stage latency histograms.

May import: ``bridge.protocol`` only. Nothing here opens a socket, starts a thread or talks to a
database.
"""
