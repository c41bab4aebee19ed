"""The ClickHouse analytics store: months of ticks, decisions and fills for a quant's questions.

``schema`` holds the DDL, ``store`` the one interface over two engines (the embedded ``chdb`` on Linux and
macOS, which has no Windows build, and a ClickHouse server through ``clickhouse-connect``), ``load`` reads
NT8 exports in, ``queries`` answers bars and the like. Never runs in the hot thread.

May import: the ground floor (``bridge``, ``bridge.core``, ``bridge.protocol``, ``bridge.data``,
``bridge.storage``).
"""
