"""The decision path of one NT8 session: quality gate, market state, features, strategies,
portfolio, risk, order emission and recording, wired as explicit timed stages
(``pipeline.DecisionPipeline``), plus the sidecar's own order ledger.

May import: the ground floor, ``strategies``, ``ml``, ``reports``, ``bridge.risk`` and
``bridge.audit``. Never the transport, NT8 hosting or the CLI: the pipeline is driven by whoever
hands it messages.
"""
