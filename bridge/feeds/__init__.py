"""Market data beside NT8's own stream: the feed interface and hand-over (``base``), Interactive Brokers
(``ib``), Alpha Vantage (``alpha_vantage``), and the cross-feed reference book that says which feed to
believe (``reference``). Feeds run on their own threads; the sidecar's loop drains what they deliver.

May import: the ground floor (``bridge``, ``bridge.protocol``, ``bridge.core``, ``bridge.data``,
``bridge.storage``). The decision path and everything above it may import it.
"""
