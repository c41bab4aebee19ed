"""Reports: backtest performance statistics, compliance exports (blotter, RTS 22, CFTC positions,
day summary) and the model evaluation report. Functions of data; they print nothing themselves.

May import: the ground floor of ``bridge`` (``core``, ``protocol``, ``data``, ``storage``); never
its engine, transport, NT8 hosting or CLI, nor ``ml`` or ``strategies``.
"""
