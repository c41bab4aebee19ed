"""The research engine: the sidecar's own decision path in this process, fed by the playback without ZeroMQ.

``run_research`` builds a real ``SidecarServer`` (the same strategies, portfolio, Kelly sizing, risk engine,
order tracking and audit recorder as ``nt8bridge serve``) and hands it to ``run_playback`` through an
``InProcessLink`` instead of a socket. The link has the ``Nt8Client`` interface the playback drives
(``connect``, ``send``, ``wait_acks``, ``close``), and each message goes to ``SidecarServer.deliver``, the
method the socket path calls after decoding: the decisions, the batching (``window``), the fill model and
the digest are the playback's, so a run gives the digest ``playback --engine python`` gives on the same data
and configuration (a test checks it), minus the encoding, the two socket hops and the lockstep waits.

Storage: with ``db_url`` every row and audit record goes through a real ``StorageWriter`` into that database,
as the sidecar's would; without it, rows are counted and dropped (``CountingSink``), and the audit chain is
kept in memory, so a study pays for nothing it does not keep.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from bridge.core.config import Config
from bridge.core.instruments import InstrumentMaster
from bridge.core.timing import NoTimings
from bridge.engine.pipeline import STAGES
from bridge.nt8.client import ClientError
from bridge.nt8.playback import PlaybackError, PlaybackResult, TickStream, run_playback
from bridge.protocol.codec import ProtocolError
from bridge.protocol.messages import Error, Hello, HelloFlags, InstrumentDecl, Message, MsgType, Welcome
from bridge.transport.server import TICK_TO_BRACKET, SidecarServer
from bridge.transport.sidecar import make_strategy_factory, master_for

__all__ = ["CountingSink", "InProcessLink", "run_research"]

_HELLO = int(MsgType.HELLO)


class CountingSink:
    """A storage writer that keeps nothing: rows are counted by table and dropped (a study that needs no
    database). It has the writer's ``write`` and ``update``, all the recorder asks of storage."""

    def __init__(self) -> None:
        self.rows: Counter = Counter()
        self.updates: Counter = Counter()

    def write(self, table: str, row: tuple) -> None:
        self.rows[table] += 1

    def update(self, table: str, key: Any, values: dict[str, Any]) -> None:
        self.updates[table] += 1


class InProcessLink:
    """The lockstep ``Nt8Client`` interface over a ``SidecarServer`` in this process: no socket, no codec.

    The replies to message N are what ``deliver`` returned for it, exactly what the socket client collects
    between the acknowledgements of N-1 and N."""

    def __init__(self, server: SidecarServer, *, instance_id: str, account: str,
                 instruments: list[InstrumentDecl]) -> None:
        self.server = server
        self.instance_id = instance_id
        self.account = account
        self.instruments = instruments
        self.rid = f"research:{instance_id}".encode()
        self.seq = 0
        self.session: Any = None
        self._replies: dict[int, list[Message]] = {}

    def __enter__(self) -> InProcessLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> Welcome:
        self.seq = 1
        hello = Hello(self.instance_id, self.account, int(HelloFlags.LOCKSTEP), 1000, time.time_ns(),
                      "nt8bridge-research", self.instruments)
        try:
            self.session, resumed = self.server.open_session(self.rid, "in-process", hello, self.seq, _HELLO)
        except ProtocolError as exc:
            raise ClientError(f"the sidecar refused HELLO: {exc.text}") from None
        if resumed:  # over a socket these arrive after WELCOME, before the first ack: the next message's
            self._replies[self.seq + 1] = list(resumed)
        cfg = self.server.config.server
        return Welcome(self.session.session_id, "in-process", cfg.heartbeat_ms, cfg.heartbeat_timeout_ms,
                       self.session.started_ns, cfg.max_message_bytes)

    def send(self, msg: Message) -> int:
        self.seq = seq = self.seq + 1
        t = int(type(msg).TYPE)
        try:
            replies = self.server.deliver(self.session, seq, t, msg)
        except ProtocolError as exc:  # what the socket path answers with an ERROR
            replies = [Error(int(exc.code), exc.seq, exc.msg_type, exc.text)]
        if replies:
            self._replies.setdefault(seq, []).extend(replies)
        return seq

    def wait_acks(self, last_seq: int) -> dict[int, list[Message]]:
        out, self._replies = self._replies, {}
        return out

    def close(self, reason: str | None = "research run finished") -> None:
        if self.session is not None:
            self.server._end_session(self.session, "BYE")
            self.session = None


def run_research(stream: TickStream | Iterable[TickStream], config: Config, master: InstrumentMaster | None = None, *,
                 db_url: str | None = None, window: int = 256, instance_id: str | None = None,
                 progress: Callable[[int], None] | None = None, audit_dir: Path | None = None) -> PlaybackResult:
    """Play ``stream`` (a TickStream, or its pieces from ``iter_stream``) through the sidecar's decision path in
    this process; the result is the playback's.

    ``db_url``: record every row there through a real storage writer, and with ``audit.enabled`` every audit
    record in the hash chain and its journal, where the sidecar keeps them for that database; without it rows
    (audit records among them) are counted and dropped, unless ``audit_dir`` is given: then every audit record is
    hashed into a chain journaled and checkpointed there, as the sidecar's are (audit on, no database)."""
    master = master or master_for(config)
    writer: Any = None
    chain = None
    if db_url is not None:
        from bridge.storage.writer import StorageWriter
        writer = StorageWriter(db_url, batch_rows=config.storage.batch_rows,
                               queue_batches=config.storage.queue_batches,
                               flush_interval_s=config.storage.flush_interval_ms / 1000.0)
        writer.start()
        if config.audit.enabled:
            from bridge.audit.trail import open_chain
            chain = open_chain(config, db_url, writer)
    elif audit_dir is not None and config.audit.enabled:
        from bridge.audit.trail import journal_chain
        chain = journal_chain(config, audit_dir)
    if writer is None:  # tick rows would only be counted: not built at all (decisions do not read them)
        config = dataclasses.replace(config, storage=dataclasses.replace(config.storage, store_ticks=False))
    sink = writer if writer is not None else CountingSink()
    # stage latencies of a replay say nothing about the market, and nobody reads them here
    server = SidecarServer(config, sink, master, make_strategy_factory(config), chain=chain,
                           timings=NoTimings(STAGES + (TICK_TO_BRACKET,)))
    try:
        server.record_config()
        if not isinstance(stream, TickStream):  # pieces (iter_stream): the first one names the instruments
            pieces = iter(stream)
            first = next(pieces, None)
            if first is None:
                raise PlaybackError("no market data to play back")
            names, stream = first.names, itertools.chain((first,), pieces)
        else:
            names = stream.names
        decls = [InstrumentDecl(name, master.resolve(name).tick_size, master.resolve(name).point_value)
                 for name in names]
        link = InProcessLink(server, instance_id=instance_id or "research", account="Playback101",
                             instruments=decls)
        return run_playback(stream, "in-process", config, master, window=window, instance_id=link.instance_id,
                            progress=progress, link=link)
    finally:
        if chain is not None:
            chain.close()
        if writer is not None:
            writer.close()
