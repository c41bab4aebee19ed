"""nt8bridge sidecar: the Python side of the NinjaTrader 8 bridge."""

__version__ = "0.1.0"
