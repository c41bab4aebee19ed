"""The ``nt8bridge`` command line: the top floor, the one place that assembles every command.

``main`` builds the parser; ``ops`` adds the desk's operations commands (limits, compliance
reports), ``ml`` the model commands (train, model, drift, retrain), ``service`` starting the sidecar
at logon, ``doctor`` the check of a desk. Each command imports what it needs when it runs, so
``nt8bridge --help`` starts fast. May import anything; nothing imports it.
"""
