"""Research on history: walk-forward backtests through the whole decision path (a real sidecar,
the portfolio, the risk engine, the playback's fill model with costs).

May import: everything below the CLI (it drives ``bridge.nt8`` playbacks). The CLI and notebooks
call it; nothing below imports it.
"""
