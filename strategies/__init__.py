"""Trading strategies and portfolio construction.

``base.Strategy`` is the one interface (see docs/strategies.md); ``momentum``, ``mean_reversion``,
``spread`` and ``ml_strategy`` implement it; ``features`` computes the rule strategies' bar features;
``regime`` detects market regimes; ``kelly``, ``exposure`` and ``portfolio`` net, size and cap the
signals; ``registry`` builds the configured strategies.

May import: the ground floor of ``bridge`` (``core``, ``protocol``, ``data``, ``storage``), ``ml``
and ``reports``; never the engine, transport, NT8 hosting or the CLI of ``bridge``.
"""
