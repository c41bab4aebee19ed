"""The sidecar as a process on the wire: the ZeroMQ ROUTER server (sessions, sequence numbers,
heartbeats, lost peers), the operator control channel, remote mode's policy (secret files, the peer
allowlist, replay guards: ``security``) and the operators' signed control requests (``operators``),
the Prometheus endpoint, and starting the sidecar in this process, as a child process, or at logon on
Windows.

May import: everything below it (the ground floor, ``strategies``, ``ml``, ``reports``,
``bridge.risk``, ``bridge.audit``, ``bridge.engine``). Never NT8 hosting or the CLI.
"""
