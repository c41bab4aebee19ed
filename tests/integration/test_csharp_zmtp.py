"""The C# ZMTP 3.1 DEALER (ninjascript/AddOns/Nt8Bridge/Zmtp.cs) against libzmq through pyzmq, and
against the real sidecar: the interoperability the NinjaScript depends on."""

from __future__ import annotations

import socket
import time

import pytest
import zmq

from bridge.protocol import codec
from bridge.protocol import messages as m
from bridge.transport.sidecar import SidecarProcess
from tests.integration.dotnet import net_frames

ES = m.InstrumentDecl("ES 06-18", 0.25, 50.0)


@pytest.fixture
def router():
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    yield sock, f"tcp://127.0.0.1:{port}"
    sock.close()


def _hello(cs):
    h = cs.Hello()
    h.InstanceId, h.Account, h.Flags, h.HeartbeatMs, h.Nt8Clock, h.Nt8Version = "cs", "Sim101", 1, 1000, 0, "8.1"
    d = cs.InstrumentDecl()
    d.Name, d.TickSize, d.PointValue = "ES 06-18", 0.25, 50.0
    h.Instruments.Add(d)
    return h


def test_csharp_dealer_and_libzmq_router_exchange_protocol_messages(cs, router):
    sock, endpoint = router
    dealer = cs.ZmtpDealer()
    dealer.Connect(endpoint, 5000)
    assert dealer.PeerSocketType == "ROUTER"
    dealer.Send(cs.Codec.Encode(_hello(cs), 1, 0, 0))
    assert sock.poll(5000)
    rid, header, body = sock.recv_multipart()
    h, msg = codec.decode([header, body])
    assert isinstance(msg, m.Hello) and msg.instance_id == "cs" and msg.instruments[0].name == "ES 06-18"
    sock.send_multipart([rid, *codec.encode(m.Welcome(42, "0.1.0", 1000, 5000, 0, 65536), 1, 0)])
    frames = dealer.Receive(5000)
    welcome, hdr = cs.Codec.Decode(frames, None)
    assert int(welcome.SessionId) == 42 and int(hdr.Seq) == 1
    dealer.Dispose()


def test_long_frames_cross_both_ways(cs, router):
    sock, endpoint = router
    dealer = cs.ZmtpDealer()
    dealer.Connect(endpoint, 5000)
    big = bytes(range(256)) * 40  # 10,240 bytes: the 8-byte size form
    dealer.Send(net_frames([b"x", big]))
    rid, a, b = sock.recv_multipart()
    assert (a, b) == (b"x", big)
    sock.send_multipart([rid, big, b"y"])
    got = dealer.Receive(5000)
    assert [bytes(f) for f in got] == [big, b"y"]
    dealer.Dispose()


def test_libzmq_heartbeats_are_answered_and_the_connection_lives(cs):
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.HEARTBEAT_IVL, 50)  # libzmq pings every 50 ms and drops a peer silent for 300 ms
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 300)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    dealer = cs.ZmtpDealer()
    dealer.Connect(f"tcp://127.0.0.1:{port}", 5000)
    dealer.Send(net_frames([b"hi"]))
    rid, _ = sock.recv_multipart()
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        assert dealer.Receive(100) is None  # only PINGs arrive, answered inside Receive
    assert dealer.PingsAnswered >= 5
    sock.send_multipart([rid, b"still there"])  # ROUTER_MANDATORY: raises if libzmq dropped the peer
    assert [bytes(f) for f in dealer.Receive(5000)] == [b"still there"]
    dealer.Dispose()
    sock.close()


def test_an_oversize_frame_from_the_peer_is_refused_without_crashing(cs, router):
    sock, endpoint = router
    dealer = cs.ZmtpDealer()
    dealer.MaxFrameBytes = 1000
    dealer.Connect(endpoint, 5000)
    dealer.Send(net_frames([b"hi"]))
    rid, _ = sock.recv_multipart()
    sock.send_multipart([rid, b"z" * 5000])
    with pytest.raises(Exception, match="limit 1000"):
        dealer.Receive(5000)


def test_connecting_to_nothing_fails_with_a_clear_error(cs):
    # a plain socket, bound and closed at once (libzmq would close its listener in the background)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    dealer = cs.ZmtpDealer()
    with pytest.raises(Exception) as info:
        dealer.Connect(f"tcp://127.0.0.1:{port}", 2000)
    assert "refused" in str(info.value).lower() or "no connection" in str(info.value)


def test_csharp_client_against_the_real_sidecar(cs, tmp_path):
    with SidecarProcess(f"sqlite:///{tmp_path}/cs.sqlite") as sidecar:
        dealer = cs.ZmtpDealer()
        dealer.Connect(sidecar.endpoint, 5000)
        dealer.Send(cs.Codec.Encode(_hello(cs), 1, cs.WireTime.Now(), 0))
        welcome, _ = cs.Codec.Decode(dealer.Receive(5000), None)
        assert int(welcome.SessionId) > 0
        tick = cs.Tick()
        tick.Price, tick.Volume, tick.Bid, tick.Ask = float("nan"), 1, float("nan"), float("nan")
        tick.TsExchange = tick.TsReceive = 15257898000000000  # 2018-05-08 14:30 UTC, in session
        dealer.Send(cs.Codec.Encode(tick, 2, cs.WireTime.Now(), 0))
        error, _ = cs.Codec.Decode(dealer.Receive(5000), None)
        assert int(error.Code) == int(m.ErrorCode.QUALITY_NONFINITE_PRICE) and int(error.OffendingSeq) == 2
        ack, _ = cs.Codec.Decode(dealer.Receive(5000), None)
        assert int(ack.AckSeq) == 2  # lockstep: acknowledged after its reply
        dealer.Dispose()
