#region Using declarations
using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Threading;
#endregion

// The NinjaScript side of a session with the sidecar (docs/protocol.md, "The NinjaScript link"):
// HELLO/WELCOME, heartbeats, reconnect with backoff, and a send queue that never blocks NT8's threads.
//
// Threaded mode (live and market replay): Post only enqueues. One writer thread dials, sends HELLO,
// drains the queue in batches and sends HEARTBEAT (plus a ZMTP PING) after HeartbeatMs of silence; one
// reader thread receives, dispatches to the listener and watches liveness. Policies:
// - The queue holds SendQueueCapacity messages; a Post beyond that is dropped and counted (Dropped):
//   blocking OnMarketData until the network recovers would freeze NT8.
// - While disconnected, messages stay queued. When a session is (re)established, queued market data
//   (TICK, TICKS, BAR) is discarded and counted (DroppedStale): a strategy must never act on quotes
//   from before the outage. Order, execution, position and account events are kept and sent after
//   WELCOME, in order, with new sequence numbers (seq restarts at 1 on every connection).
// - Delivery is at most once: a batch that was being written when the connection broke may or may
//   not have arrived, and is not resent (a duplicate ORDER_UPDATE would be stored twice).
// - The peer is lost when nothing at all (any frame, ZMTP PONG included) arrived for HeartbeatTimeoutMs,
//   when the socket fails, or when the framing is broken; OnLinkDown fires once per lost session, and
//   the link redials after BackoffInitialMs, doubling up to BackoffMaxMs while attempts fail.
// - A message that is well framed but cannot be decoded is counted (ProtocolErrors) and logged (at most
//   20 lines per 10 s), and the connection is kept: one bad message is no reason to drop a session.
// - Stop waits (StopDrainMs at most) until the sidecar has acknowledged the last posted message, then sends
//   BYE: a sidecar far behind would otherwise lose what it had not read when the connection closes.
//
// Lockstep mode (simulated playback): no threads. Post sends inline and receives on the calling thread,
// dispatching every reply, until the sidecar's HEARTBEAT acknowledges that message; runs are then
// deterministic. A listener may Post again from inside a callback: each Post waits for its own ack, and
// the highest ack seen is kept per connection so that an outer Post whose ack a nested one consumed
// returns at once.
namespace NinjaTrader.NinjaScript.AddOns.Nt8Bridge
{
	public enum LinkState { Idle, Connecting, Connected, Down, Stopped }

	public interface ILinkListener
	{
		/// <summary>A session has started. Threaded mode: called on the link's reader thread. Lockstep mode:
		/// on the thread that called Start or Post.</summary>
		void OnWelcome(Welcome welcome);

		/// <summary>BRACKET, CANCEL, CHANGE, FLATTEN or ERROR from the sidecar (never HEARTBEAT or WELCOME).</summary>
		void OnCommand(Header header, Message message);

		/// <summary>Once per lost session (heartbeat timeout, socket closed, bad framing); not on Stop.</summary>
		void OnLinkDown(string reason);
	}

	public sealed class LinkOptions
	{
		public string Endpoint = "tcp://127.0.0.1:5555";  // or several, comma separated: a hot-standby pair (see Endpoints)
		public int HeartbeatMs = 1000;
		public int HeartbeatTimeoutMs = 5000;
		public int ConnectTimeoutMs = 2000;
		public int BackoffInitialMs = 100;
		public int BackoffMaxMs = 5000;
		public int SendQueueCapacity = 65536;
		public long MaxFrameBytes = 1 << 20;
		public bool Lockstep;                 // playback only: Post sends inline and waits for the sidecar's ack
		public int LockstepTimeoutMs = 10000;
		public int LockstepWindow = 1;        // lockstep: messages that may travel unacknowledged before Post waits (see Flush)
		public int StopDrainMs = -1;          // threaded Stop: wait this long at most for the sidecar to acknowledge the last
		                                      // message before BYE; negative: max(HeartbeatTimeoutMs, 5000); 0: no wait
		public Action<string> Log;            // may be null; the strategy passes NT8's Print
		public byte[] Secret;                 // remote mode: the shared secret (Auth.ReadSecretFile); every message is then
		                                      // MAC'd both ways, and what the sidecar sends unauthenticated is dropped
		                                      // (AuthFailures). Null: unauthenticated, for a sidecar on loopback. Never logged.

		internal LinkOptions Copy() { return (LinkOptions)MemberwiseClone(); }
	}

	/// <summary>The link cannot do what was asked; the message says what to do about it.</summary>
	public sealed class LinkException : Exception
	{
		public LinkException(string message) : base(message) { }

		public LinkException(string message, Exception inner) : base(message, inner) { }
	}

	public sealed class BridgeLink : IDisposable
	{
		private const uint HelloFlagLockstep = 1;
		private const ushort SessionNoHello = 200;  // ErrorCode SESSION_NO_HELLO: the sidecar has no session for us
		private const ushort SessionStandby = 205;  // ErrorCode SESSION_STANDBY: that sidecar is (now) the standby of a pair
		private const int ReceiveSliceMs = 100;      // the reader and writer look at liveness at least this often
		private const int BatchMessages = 512;       // messages written per socket write when the queue is long
		private const int LogBurst = 20;             // rate-limited log: lines per window
		private const long LogWindowMs = 10000;
		private const int ByeDrainMs = 1000;         // after BYE, how long to wait for the sidecar to close
		private const int DefaultStopDrainMs = 5000; // before BYE, how long to wait for the sidecar to catch up (at least)
		private const long DialLogEveryMs = 60000;   // while the sidecar stays away: one reminder a minute, not one per attempt

		private readonly LinkOptions options;  // a copy: the caller's object may change while threads read it
		// A hot-standby pair: the link dials one endpoint at a time, and moves to the next one whenever a connection
		// fails, is refused (the standby answers HELLO with SESSION_STANDBY) or is lost; it backs off only once
		// every endpoint has failed since the last session. The leader is whichever sidecar says WELCOME.
		private readonly string[] endpoints;
		private int endpointIndex;   // the endpoint dialled next
		private int failedInRound;   // endpoints that failed since the last session (or the last backoff)
		private readonly Func<Hello> helloFactory;
		private readonly ILinkListener listener;
		private readonly object lifecycleLock = new object();
		private readonly object stateLock = new object();
		private readonly ManualResetEvent stopEvent = new ManualResetEvent(false);
		private volatile bool started, stopping;
		private volatile string byeReason = "stopped";
		private int state;  // LinkState

		// threaded mode: the queue and the writer's batch taken from it
		private readonly object queueLock = new object();
		private Queue<Message> queue = new Queue<Message>();
		private int queued;
		private bool writerWaiting, queueFullLogged;
		private readonly List<Message> carry = new List<Message>();  // writer thread only
		private readonly object connLock = new object();
		private Connection current;
		private bool readerExit;
		private Thread writer, reader;
		private int sessions;

		// lockstep mode
		private readonly object lockstepGate = new object();
		private readonly List<Tick> lockstepBatch = new List<Tick>();  // lockstep window: ticks not sent yet
		private const int MaxBatchTicks = 1000;  // 51 bytes each: a TICKS message stays under the 64 KiB message limit
		private Connection ls;
		private long nextLockstepDial;
		private bool takeoverAwaited;  // lockstep: this outage has had its wait for a takeover (AwaitTakeover)
		private int lockstepBackoffMs;

		private readonly object logLock = new object();
		private long logWindowStart;
		private int logLines, logSuppressed;
		private long failedDials, lastDialLog;

		private long sent, received, dropped, droppedOrderEvents, droppedStale, reconnects, linkDowns, protocolErrors, errorsReceived;
		private long authFailures;
		private long sessionId;
		private double lastRoundTripMs;
		private volatile string lastError;

		/// <summary>One TCP connection and the session on it; a new one for every (re)connection.</summary>
		private sealed class Connection
		{
			public readonly ZmtpDealer Dealer;
			public ulong NextSeq = 1;   // one sender at a time: the writer thread, or the thread that Posts in lockstep
			public long LastSend;       // Stopwatch timestamp, same owner as NextSeq
			public long LastPing;       // Stopwatch timestamp of the last ZMTP PING, writer thread only
			public long LastSeqIn;      // echoed as HEARTBEAT.ack_seq; written by the reader
			public ulong HighestAck;    // lockstep: highest HEARTBEAT.ack_seq seen
			public long AckIn;          // threaded: the same (WELCOME acks HELLO), written by the reader, read by the writer's Stop
			public ulong LastPostedSeq; // threaded: seq of the last posted message written (not HELLO, not our HEARTBEATs); writer only
			public uint PeerTimeoutMs;  // the sidecar's heartbeat timeout, from WELCOME
			public volatile bool Welcomed;
			public volatile SessionAuth Auth;  // remote mode: made when HELLO is sealed (writer), keyed by WELCOME (reader)
			public int Down, Reported;
			public volatile string DownReason;
			public readonly ManualResetEventSlim ReaderDone = new ManualResetEventSlim(false);

			public Connection(ZmtpDealer dealer)
			{
				Dealer = dealer;
				LastSend = LastPing = Stopwatch.GetTimestamp();
			}

			public bool Alive { get { return Volatile.Read(ref Down) == 0; } }
		}

		public BridgeLink(LinkOptions options, Func<Hello> helloFactory, ILinkListener listener)
		{
			if (options == null)
				throw new ArgumentNullException(nameof(options));
			if (helloFactory == null)
				throw new ArgumentNullException(nameof(helloFactory));
			if (listener == null)
				throw new ArgumentNullException(nameof(listener));
			if (string.IsNullOrEmpty(options.Endpoint) || ParseEndpoints(options.Endpoint).Length == 0)
				throw new ArgumentException("LinkOptions.Endpoint is empty; the sidecar listens on tcp://127.0.0.1:5555 by default");
			if (options.HeartbeatMs <= 0 || options.HeartbeatTimeoutMs <= options.HeartbeatMs)
				throw new ArgumentException("LinkOptions: HeartbeatTimeoutMs (" + options.HeartbeatTimeoutMs + ") must exceed HeartbeatMs ("
					+ options.HeartbeatMs + "), which must be positive");
			if (options.LockstepWindow < 1)
				throw new ArgumentException("LinkOptions: LockstepWindow must be at least 1 (1: every message waits for its ack)");
			if (options.ConnectTimeoutMs <= 0 || options.LockstepTimeoutMs <= 0)
				throw new ArgumentException("LinkOptions: ConnectTimeoutMs and LockstepTimeoutMs must be positive");
			if (options.BackoffInitialMs <= 0 || options.BackoffMaxMs < options.BackoffInitialMs)
				throw new ArgumentException("LinkOptions: BackoffInitialMs must be positive and BackoffMaxMs at least as large");
			if (options.SendQueueCapacity <= 0 || options.MaxFrameBytes <= 0)
				throw new ArgumentException("LinkOptions: SendQueueCapacity and MaxFrameBytes must be positive");
			if (options.Secret != null && options.Secret.Length > 0 && options.Secret.Length < Auth.MinSecretBytes)
				throw new ArgumentException("LinkOptions.Secret: at least " + Auth.MinSecretBytes + " bytes (nt8bridge secret new FILE writes 32)");
			this.options = options.Copy();
			// our own copy: the caller's array may change while the threads read it; empty means none
			this.options.Secret = options.Secret == null || options.Secret.Length == 0 ? null : (byte[])options.Secret.Clone();
			endpoints = ParseEndpoints(options.Endpoint);
			if (this.options.StopDrainMs < 0)
				this.options.StopDrainMs = Math.Max(options.HeartbeatTimeoutMs, DefaultStopDrainMs);
			this.helloFactory = helloFactory;
			this.listener = listener;
			lockstepBackoffMs = options.BackoffInitialMs;
			logWindowStart = Stopwatch.GetTimestamp();
		}

		public LinkState State { get { return (LinkState)Volatile.Read(ref state); } }

		/// <summary>The endpoints of LinkOptions.Endpoint, in the order they are tried.</summary>
		public string[] Endpoints { get { return (string[])endpoints.Clone(); } }

		/// <summary>The endpoint of the current session, or the one dialled next.</summary>
		public string Endpoint { get { return endpoints[Volatile.Read(ref endpointIndex)]; } }
		public bool IsConnected { get { return State == LinkState.Connected; } }
		public ulong SessionId { get { return (ulong)Interlocked.Read(ref sessionId); } }

		/// <summary>Now minus TsEcho of the latest reply that carried one (WELCOME, acks, commands), in ms.</summary>
		public double LastRoundTripMs { get { return Volatile.Read(ref lastRoundTripMs); } }
		public string LastError { get { return lastError; } }

		/// <summary>Messages written to the socket: HELLO, HEARTBEAT and BYE included.</summary>
		public long Sent { get { return Interlocked.Read(ref sent); } }
		/// <summary>Well-formed messages received from the sidecar, heartbeats included.</summary>
		public long Received { get { return Interlocked.Read(ref received); } }
		/// <summary>Posts refused: queue full, link stopped or not started, a type NT8 does not send, not encodable,
		/// or (lockstep) no connection.</summary>
		public long Dropped { get { return Interlocked.Read(ref dropped); } }
		/// <summary>Of Dropped: ORDER_UPDATE, EXECUTION, POSITION and ACCOUNT messages (anything but market data and heartbeats).
		/// Only a full queue, a stopped link or a missing session drops them; a non-zero count means the sidecar's record
		/// of orders is incomplete.</summary>
		public long DroppedOrderEvents { get { return Interlocked.Read(ref droppedOrderEvents); } }
		/// <summary>Queued TICK, TICKS and BAR messages discarded when a session started: quotes from before it.</summary>
		public long DroppedStale { get { return Interlocked.Read(ref droppedStale); } }
		/// <summary>Sessions established after the first one.</summary>
		public long Reconnects { get { return Interlocked.Read(ref reconnects); } }
		/// <summary>Lost sessions, as reported to OnLinkDown.</summary>
		public long LinkDowns { get { return Interlocked.Read(ref linkDowns); } }
		/// <summary>Broken ZMTP framing, oversize frames, and messages that could not be decoded.</summary>
		public long ProtocolErrors { get { return Interlocked.Read(ref protocolErrors); } }
		public long ErrorsReceived { get { return Interlocked.Read(ref errorsReceived); } }
		/// <summary>Remote mode: messages from the sidecar dropped because their HMAC was missing or wrong, or their seq
		/// replayed; never acted on.</summary>
		public long AuthFailures { get { return Interlocked.Read(ref authFailures); } }
		/// <summary>Messages waiting in the send queue (threaded mode).</summary>
		public int Queued { get { return Volatile.Read(ref queued); } }

		/// <summary>Threaded: starts the IO threads and returns at once. Lockstep: connects and exchanges
		/// HELLO/WELCOME on this thread, and throws LinkException when that fails.</summary>
		public void Start()
		{
			lock (lifecycleLock)
			{
				if (stopping)
					throw new InvalidOperationException("this link was stopped; create a new BridgeLink to connect again");
				if (started)
					return;
				started = true;
			}
			if (options.Lockstep)
			{
				lock (lockstepGate)
				{
					string why = null;
					for (int attempt = 0; attempt < endpoints.Length; attempt++)
						if (LockstepDial(out why))
							return;
					started = false;
					throw new LinkException("Cannot open a lockstep session with the sidecar at " + options.Endpoint + ": " + why
						+ ". Start the sidecar (nt8bridge serve --bind " + endpoints[0] + ") or correct the endpoint, then start again.");
				}
			}
			SetState(LinkState.Connecting);
			reader = new Thread(ReaderLoop) { IsBackground = true, Name = "Nt8Bridge link reader" };
			writer = new Thread(WriterLoop) { IsBackground = true, Name = "Nt8Bridge link writer" };
			reader.Start();
			writer.Start();
		}

		/// <summary>Threaded: waits until a session is up (WELCOME received) or timeoutMs has passed; true when the
		/// link is connected. On false the link goes on trying in the background. Lockstep: Start has connected
		/// already (or thrown), so this only says whether the link is connected now; it never waits.</summary>
		public bool WaitConnected(int timeoutMs)
		{
			if (options.Lockstep)
				return IsConnected;
			long deadline = Deadline(Math.Max(0, timeoutMs));
			lock (stateLock)
			{
				while (State != LinkState.Connected)
				{
					int left = MsUntil(deadline);
					if (left <= 0 || !started || stopping)
						return false;
					Monitor.Wait(stateLock, left);
				}
				return true;
			}
		}

		/// <summary>Threaded: enqueue and return at once; false when dropped (counted). Lockstep: send, then
		/// dispatch replies until the sidecar acknowledges; false when it cannot be sent or is not acknowledged.</summary>
		public bool Post(Message message)
		{
			if (message == null || !Postable(message.Type))
			{
				Interlocked.Increment(ref dropped);
				LogLimited("Post refused a " + (message == null ? "null" : message.Type.ToString())
					+ " message: the link sends HELLO and BYE itself, and only NT8's messages can be posted");
				return false;
			}
			if (options.Lockstep)
				return PostLockstep(message);
			if (stopping)
			{
				Drop(message);
				return false;
			}
			bool accepted = false, logFull = false;
			lock (queueLock)
			{
				if (queue.Count < options.SendQueueCapacity)
				{
					queue.Enqueue(message);
					Volatile.Write(ref queued, queue.Count);
					accepted = true;
					if (writerWaiting)
						Monitor.Pulse(queueLock);
				}
				else
				{
					logFull = !queueFullLogged;  // one line per episode, not one per dropped tick
					queueFullLogged = true;
				}
			}
			if (!accepted)
			{
				Drop(message);
				if (logFull)
					LogLimited("the send queue is full (" + options.SendQueueCapacity + " messages): new messages are dropped until it drains");
			}
			return accepted;
		}

		/// <summary>Sends BYE when connected, stops and joins the threads. Idempotent.</summary>
		public void Stop(string byeReason)
		{
			lock (lifecycleLock)
			{
				if (stopping)
					return;
				this.byeReason = string.IsNullOrEmpty(byeReason) ? "stopped" : byeReason;
				stopping = true;
				stopEvent.Set();
			}
			if (options.Lockstep)
				StopLockstep();
			else
				StopThreads();
			lock (stateLock)
			{
				Volatile.Write(ref state, (int)LinkState.Stopped);
				Monitor.PulseAll(stateLock);  // WaitConnected
			}
			Log("stopped (" + this.byeReason + "): " + Sent + " sent, " + Received + " received, " + Dropped + " dropped, "
				+ DroppedStale + " stale dropped, " + LinkDowns + " link downs, " + ProtocolErrors + " protocol errors, "
				+ DroppedOrderEvents + " of the dropped were order events"
				+ (options.Secret != null ? ", " + AuthFailures + " unauthenticated dropped" : ""));
		}

		public void Dispose() { Stop("disposed"); }

		// ------------------------------------------------------------------ threaded mode: writer

		private void WriterLoop()
		{
			int backoff = options.BackoffInitialMs;
			while (!stopping)
			{
				Connection conn = null;
				try
				{
					conn = Dial();
					if (conn != null)
						Serve(conn);
				}
				catch (Exception e)
				{
					// a bug, not a network failure (those are handled where they happen): keep the link alive
					lastError = "the link's writer failed: " + e.Message;
					LogLimited(lastError + "\n" + e);
				}
				if (conn != null)
				{
					MarkDown(conn, stopping ? "stopped" : "the link's writer failed");
					ReturnCarry();
					// the reader reports OnLinkDown for this session before the next one starts
					while (!conn.ReaderDone.Wait(ReceiveSliceMs) && !stopping) { }
					if (conn.Welcomed)
						backoff = options.BackoffInitialMs;
				}
				if (stopping)
					break;
				SetState(LinkState.Down);
				// the next endpoint of a pair at once; the full backoff once every endpoint has failed
				bool allFailed = EveryEndpointFailed();
				if (stopEvent.WaitOne(allFailed ? backoff : options.BackoffInitialMs))
					break;
				if (allFailed)
					backoff = (int)Math.Min((long)backoff * 2, options.BackoffMaxMs);
			}
		}

		private Connection Dial()
		{
			Hello hello;
			string why;
			Connection conn = Open(out hello, out why);
			if (conn == null)
				return null;
			lock (connLock)
			{
				current = conn;
				Monitor.PulseAll(connLock);
			}
			SendHello(conn, hello);
			return conn;
		}

		// Connects (greeting, READY) and builds the session's HELLO; null, with why, when that fails.
		private Connection Open(out Hello hello, out string why)
		{
			SetState(LinkState.Connecting);
			ZmtpDealer dealer;
			try
			{
				hello = MakeHello();
				dealer = Connect();
			}
			catch (Exception e)
			{
				hello = null;
				why = e.Message;
				DialFailed(why);
				NextEndpoint(false);
				return null;
			}
			why = null;
			return new Connection(dealer);
		}

		// HELLO is the first message of every connection; false when it could not go out.
		private bool SendHello(Connection conn, Hello hello)
		{
			byte[][] frames = Encode(conn, hello);
			if (frames != null)
				return Transmit(conn, frames);
			MarkDown(conn, "HELLO could not be encoded");
			return false;
		}

		// Until the connection is down or the link stops: wait for WELCOME, then drain the queue and heartbeat.
		private void Serve(Connection conn)
		{
			List<byte[][]> batch = new List<byte[][]>(BatchMessages);
			while (true)
			{
				bool stop;
				lock (queueLock)
				{
					while (true)
					{
						stop = stopping;
						if (stop || !conn.Alive || (conn.Welcomed && queue.Count > 0))
							break;
						long waitMs = conn.Welcomed ? Math.Min(HeartbeatDueInMs(conn), PingDueInMs(conn)) : ReceiveSliceMs;
						if (waitMs <= 0 || conn.Dealer.IdleMs > options.HeartbeatTimeoutMs)
							break;
						writerWaiting = true;
						Monitor.Wait(queueLock, (int)Math.Min(waitMs, ReceiveSliceMs));
						writerWaiting = false;
					}
					if (conn.Alive && conn.Welcomed && queue.Count > 0)
					{
						carry.AddRange(queue);
						queue.Clear();
						Volatile.Write(ref queued, 0);
						queueFullLogged = false;
					}
				}
				if (!conn.Alive)
					return;
				if (conn.Dealer.IdleMs > options.HeartbeatTimeoutMs)
				{
					MarkDown(conn, Silence());
					return;
				}
				if (carry.Count > 0 && !WriteCarry(conn, batch))
					return;
				if (stop)
				{
					DrainBeforeBye(conn);
					Goodbye(conn);
					return;
				}
				if (conn.Welcomed && HeartbeatDueInMs(conn) <= 0)
					SendHeartbeat(conn);
				if (conn.Welcomed && conn.Alive && PingDueInMs(conn) <= 0)
					SendPing(conn);
			}
		}

		// HEARTBEAT only after HeartbeatMs without sending anything: the messages themselves prove we are alive
		private long HeartbeatDueInMs(Connection conn) { return options.HeartbeatMs - MsSince(conn.LastSend); }

		// PING every HeartbeatMs, busy or not: libzmq answers PONG from its IO thread even while the sidecar's
		// loop is busy with our flood, so the link does not mistake a busy peer for a dead one
		private long PingDueInMs(Connection conn) { return options.HeartbeatMs - MsSince(conn.LastPing); }

		// Write the batch taken from the queue; false (and the connection down) when the socket failed.
		private bool WriteCarry(Connection conn, List<byte[][]> batch)
		{
			int done = 0, chunkEnd = 0;
			try
			{
				while (done < carry.Count)
				{
					chunkEnd = Math.Min(carry.Count, done + BatchMessages);
					batch.Clear();
					for (int i = done; i < chunkEnd; i++)
					{
						byte[][] frames = Encode(conn, carry[i]);
						if (frames != null)
							batch.Add(frames);
					}
					conn.Dealer.SendMany(batch);
					Interlocked.Add(ref sent, batch.Count);
					conn.LastSend = Stopwatch.GetTimestamp();
					conn.LastPostedSeq = conn.NextSeq - 1;
					done = chunkEnd;
				}
				carry.Clear();
				return true;
			}
			catch (Exception e)
			{
				// at most once: the chunk being written may or may not have arrived, so it is not resent
				carry.RemoveRange(0, chunkEnd);
				if (chunkEnd > done)
					LogLimited((chunkEnd - done) + " messages were being written when the connection failed; they are not resent "
						+ "(they may or may not have arrived)");
				MarkDown(conn, "sending to the sidecar failed: " + e.Message);
				return false;
			}
		}

		private void SendHeartbeat(Connection conn)
		{
			byte[][] frames = Encode(conn, new Heartbeat { AckSeq = (ulong)Interlocked.Read(ref conn.LastSeqIn) });
			if (frames != null)
				Transmit(conn, frames);
		}

		private void SendPing(Connection conn)
		{
			conn.LastPing = Stopwatch.GetTimestamp();
			try
			{
				conn.Dealer.Ping((ushort)Math.Min(ushort.MaxValue, options.HeartbeatTimeoutMs / 100), new byte[0]);
			}
			catch (Exception e)
			{
				MarkDown(conn, "sending to the sidecar failed: " + e.Message);
			}
		}

		// Stop: wait (StopDrainMs at most) until the sidecar has acknowledged the last posted message. It may be tens of
		// thousands of messages behind (a playback, a burst); BYE would queue behind them, but the connection is closed
		// soon after BYE, and a sidecar that is stopped or loses the connection while our messages are still queued
		// there loses them. The sidecar acks with its HEARTBEAT, sent when it has sent nothing else for its heartbeat
		// interval, so the wait ends at most about a heartbeat after it has caught up. Heartbeats and PINGs go on.
		private void DrainBeforeBye(Connection conn)
		{
			if (!conn.Alive || !conn.Welcomed || options.StopDrainMs <= 0)
				return;
			long last = (long)conn.LastPostedSeq;  // our own HEARTBEATs carry nothing to wait for
			if (last == 0 || Volatile.Read(ref conn.AckIn) >= last)
				return;
			long start = Stopwatch.GetTimestamp();
			long deadline = Deadline(options.StopDrainMs);
			while (conn.Alive && Volatile.Read(ref conn.AckIn) < last)
			{
				int left = MsUntil(deadline);
				if (left <= 0)
				{
					LogLimited("stopping: the sidecar acknowledged message " + Volatile.Read(ref conn.AckIn) + " of " + last + " within "
						+ options.StopDrainMs + " ms (StopDrainMs); saying BYE anyway, behind the rest");
					return;
				}
				if (conn.Dealer.IdleMs > options.HeartbeatTimeoutMs)
				{
					MarkDown(conn, Silence());
					return;
				}
				if (HeartbeatDueInMs(conn) <= 0)
					SendHeartbeat(conn);
				if (conn.Alive && PingDueInMs(conn) <= 0)
					SendPing(conn);
				lock (queueLock)
				{
					// the reader pulses on every HEARTBEAT while stopping, MarkDown when the connection goes
					if (conn.Alive && Volatile.Read(ref conn.AckIn) < last)
					{
						long waitMs = Math.Min(left, Math.Min(HeartbeatDueInMs(conn), PingDueInMs(conn)));
						Monitor.Wait(queueLock, (int)Math.Max(1, Math.Min(waitMs, ReceiveSliceMs)));
					}
				}
			}
			if (conn.Alive)
				Log("stopping: the sidecar caught up with the " + last + " messages sent after " + MsSince(start) + " ms");
		}

		private void Goodbye(Connection conn)
		{
			if (conn.Alive && conn.Welcomed)
			{
				byte[][] frames = Encode(conn, new Bye { Reason = byeReason });
				if (frames != null && Transmit(conn, frames))
				{
					try
					{
						// half-close and let the sidecar close first: closing with unread input would reset the
						// connection, and the sidecar could lose the BYE (the session would end as LOST)
						conn.Dealer.ShutdownSend();
						conn.ReaderDone.Wait(Math.Min(ByeDrainMs, options.HeartbeatTimeoutMs));
					}
					catch (Exception) { }
				}
			}
			MarkDown(conn, "stopped");
		}

		private void ReturnCarry()
		{
			lock (queueLock)
			{
				if (carry.Count == 0)
					return;
				Queue<Message> q = new Queue<Message>(carry.Count + queue.Count);
				foreach (Message m in carry)
					q.Enqueue(m);
				foreach (Message m in queue)
					q.Enqueue(m);
				queue = q;
				Volatile.Write(ref queued, q.Count);
				carry.Clear();
			}
		}

		private void StopThreads()
		{
			lock (queueLock)
				Monitor.PulseAll(queueLock);
			int joinMs = options.ConnectTimeoutMs + options.HeartbeatTimeoutMs + options.StopDrainMs + ByeDrainMs;
			if (writer != null && writer != Thread.CurrentThread && !writer.Join(joinMs))
				Log("the writer thread did not stop within " + joinMs + " ms");
			Connection conn;
			lock (connLock)
			{
				readerExit = true;
				conn = current;
				Monitor.PulseAll(connLock);
			}
			if (conn != null)
				MarkDown(conn, "stopped");
			if (reader != null && reader != Thread.CurrentThread && !reader.Join(joinMs))
				Log("the reader thread did not stop within " + joinMs + " ms");
			int unsent;
			lock (queueLock)
			{
				unsent = queue.Count;
				foreach (Message m in queue)
					Drop(m);
				queue.Clear();
				Volatile.Write(ref queued, 0);
			}
			if (unsent > 0)
			{
				Log(unsent + " queued messages were never sent (no session when the link stopped)");
			}
		}

		// ------------------------------------------------------------------ threaded mode: reader

		private void ReaderLoop()
		{
			Connection last = null;
			while (true)
			{
				Connection conn;
				lock (connLock)
				{
					while (!readerExit && (current == null || current == last))
						Monitor.Wait(connLock);
					if (readerExit)
						return;
					conn = current;
				}
				last = conn;
				try
				{
					Read(conn);
				}
				catch (Exception e)
				{
					MarkDown(conn, "the link's reader failed: " + e.Message);
					LogLimited(e.ToString());
				}
				finally
				{
					ReportDown(conn);
					conn.ReaderDone.Set();
				}
			}
		}

		private void Read(Connection conn)
		{
			while (conn.Alive)
			{
				byte[][] frames;
				if (!Receive(conn, ReceiveSliceMs, out frames))
					return;
				if (frames != null)
					Handle(conn, frames);
				if (conn.Dealer.IdleMs > options.HeartbeatTimeoutMs)
				{
					MarkDown(conn, Silence());
					return;
				}
			}
		}

		// ------------------------------------------------------------------ lockstep mode

		// Connect and exchange HELLO/WELCOME on this thread (under lockstepGate).
		private bool LockstepDial(out string why)
		{
			Hello hello;
			Connection conn = Open(out hello, out why);
			if (conn == null)
			{
				SetState(LinkState.Down);
				return false;
			}
			ls = conn;
			if (SendHello(conn, hello))
			{
				long deadline = Deadline(options.LockstepTimeoutMs);
				while (conn.Alive && !conn.Welcomed)
				{
					int left = MsUntil(deadline);
					if (left <= 0)
					{
						MarkDown(conn, "no WELCOME from the sidecar within " + options.LockstepTimeoutMs + " ms");
						break;
					}
					byte[][] reply;
					if (!Receive(conn, left, out reply))
						break;
					if (reply != null)
						Handle(conn, reply);
				}
			}
			if (conn.Alive && conn.Welcomed)
			{
				lockstepBackoffMs = options.BackoffInitialMs;
				why = null;
				return true;
			}
			why = conn.DownReason ?? "the connection was lost during the handshake";
			ReportDown(conn);  // only when a callback inside the handshake already saw WELCOME
			return false;
		}

		private bool PostLockstep(Message message)
		{
			lock (lockstepGate)  // Monitor is re-entrant: a listener callback may Post again on this thread
			{
				if (stopping || !started)
				{
					Drop(message);
					if (!stopping)
						LogLimited("Post before Start: the " + message.Type + " message was dropped");
					return false;
				}
				Connection conn = ls;
				if (conn != null && conn.Alive && conn.Welcomed && conn.PeerTimeoutMs > 0 && MsSince(conn.LastSend) >= conn.PeerTimeoutMs)
				{
					// nothing was sent for longer than the sidecar waits: it has ended the session as LOST
					MarkDown(conn, "nothing was sent for " + MsSince(conn.LastSend) + " ms, longer than the sidecar's heartbeat timeout ("
						+ conn.PeerTimeoutMs + " ms): it has ended the session");
					ReportDown(conn);
				}
				if (conn == null || !conn.Alive)
				{
					if (lockstepBatch.Count > 0)
					{
						// quotes from before the loss are stale by the time a session exists again
						Interlocked.Add(ref droppedStale, lockstepBatch.Count);
						lockstepBatch.Clear();
					}
					string why;
					if (Stopwatch.GetTimestamp() < nextLockstepDial)
					{
						Drop(message);
						return false;
					}
					if (!LockstepDial(out why) && !AwaitTakeover(out why))
					{
						if (EveryEndpointFailed())
						{
							nextLockstepDial = Deadline(lockstepBackoffMs);
							lockstepBackoffMs = (int)Math.Min((long)lockstepBackoffMs * 2, options.BackoffMaxMs);
						}
						else
							nextLockstepDial = 0;  // the next endpoint of the pair at the next Post
						Drop(message);  // DialFailed has logged why
						return false;
					}
					conn = ls;
				}
				if (!conn.Welcomed)
				{
					// posted from a callback during the handshake: there is no session to send it in yet
					Drop(message);
					return false;
				}
				Tick tick = message as Tick;
				if (tick != null && options.LockstepWindow > 1)
				{
					// With a window, ticks travel together as one TICKS message (the sidecar takes a
					// burst several times faster than single TICKs); a full batch waits for its ack.
					lockstepBatch.Add(tick);
					if (lockstepBatch.Count < Math.Min(options.LockstepWindow, MaxBatchTicks))
						return true;
					return SendBatch(conn, true);
				}
				if (lockstepBatch.Count > 0 && !SendBatch(conn, false))
					return false;  // the ticks before it go first: the sidecar sees NT8's order
				return SendLockstep(conn, message, false);
			}
		}

		// Lockstep, once per outage: the data stands still (up to LockstepTimeoutMs) while the other sidecar of a pair
		// takes over, or a restarted one comes back. A live market waits for nobody, but a playback can, and should:
		// otherwise it would race through the seconds of a failover in microseconds, dropping everything.
		private bool AwaitTakeover(out string why)
		{
			why = null;
			if (takeoverAwaited)
				return false;
			takeoverAwaited = true;
			long deadline = Deadline(options.LockstepTimeoutMs);
			while (!stopping && MsUntil(deadline) > 0)
			{
				Thread.Sleep(Math.Min(options.BackoffInitialMs, Math.Max(1, MsUntil(deadline))));
				if (LockstepDial(out why))
					return true;
			}
			return false;
		}

		// Sends the pending ticks as one TICKS message.
		private bool SendBatch(Connection conn, bool wait)
		{
			TickBatch batch = new TickBatch();
			batch.Ticks.AddRange(lockstepBatch);
			lockstepBatch.Clear();
			return SendLockstep(conn, batch, wait);
		}

		private bool SendLockstep(Connection conn, Message message, bool wait)
		{
			byte[][] frames = Encode(conn, message);
			if (frames == null)
				return false;
			ulong seq = conn.NextSeq - 1;
			if (!Transmit(conn, frames))
			{
				Drop(message);
				ReportDown(conn);
				return false;
			}
			if (wait)
				return AwaitAck(conn, seq, message.Type.ToString());
			// Up to LockstepWindow messages may travel unacknowledged; their answers are read at the
			// next wait (window full, or Flush), a point that depends only on what was posted.
			if (seq - Math.Min(seq, conn.HighestAck) < (ulong)options.LockstepWindow)
				return true;
			return AwaitAck(conn, seq, message.Type.ToString());
		}

		/// <summary>Lockstep: wait until the sidecar has acknowledged everything sent, dispatching its
		/// answers to the listener on this thread; false when the link is down or the wait timed out.
		/// Threaded mode: nothing to wait for, true.</summary>
		public bool Flush()
		{
			if (!options.Lockstep)
				return true;
			lock (lockstepGate)
			{
				Connection conn = ls;
				if (conn == null || !conn.Alive || !conn.Welcomed)
					return false;
				if (lockstepBatch.Count > 0 && !SendBatch(conn, false))
					return false;
				ulong last = conn.NextSeq - 1;
				return conn.HighestAck >= last || AwaitAck(conn, last, "flush");
			}
		}

		// Receive and dispatch until the ack of seq (the sidecar acks after the answers it caused).
		private bool AwaitAck(Connection conn, ulong seq, string what)
		{
			long deadline = Deadline(options.LockstepTimeoutMs);
			while (conn.HighestAck < seq)
			{
				if (!conn.Alive)
				{
					ReportDown(conn);  // a nested Post, a callback or a refusal ended this session
					return false;
				}
				int left = MsUntil(deadline);
				if (left <= 0)
				{
					MarkDown(conn, "no acknowledgement of message " + seq + " (" + what + ") within "
						+ options.LockstepTimeoutMs + " ms");
					ReportDown(conn);
					return false;
				}
				byte[][] reply;
				if (!Receive(conn, left, out reply))
				{
					ReportDown(conn);
					return false;
				}
				if (reply != null)
					Handle(conn, reply);
			}
			return true;
		}

		private void StopLockstep()
		{
			bool entered = false;
			try
			{
				// a Post blocked on another thread holds the gate; then the socket is closed under it instead
				Monitor.TryEnter(lockstepGate, ByeDrainMs, ref entered);
				Connection conn = ls;
				if (conn == null)
					return;
				if (entered && conn.Alive && conn.Welcomed && lockstepBatch.Count > 0)
					SendBatch(conn, true);  // the last ticks of a window: delivered and acknowledged before BYE
				if (entered && conn.Alive && conn.Welcomed)
				{
					byte[][] frames = Encode(conn, new Bye { Reason = byeReason });
					if (frames != null && Transmit(conn, frames))
					{
						try
						{
							conn.Dealer.ShutdownSend();  // see Goodbye: let the sidecar read BYE and close first
							long deadline = Deadline(ByeDrainMs);
							while (MsUntil(deadline) > 0 && conn.Dealer.Receive(MsUntil(deadline)) != null) { }
						}
						catch (Exception) { }
					}
				}
				MarkDown(conn, "stopped");
			}
			finally
			{
				if (entered)
					Monitor.Exit(lockstepGate);
			}
		}

		// ------------------------------------------------------------------ both modes

		private Hello MakeHello()
		{
			Hello hello;
			try
			{
				hello = helloFactory();
			}
			catch (Exception e)
			{
				throw new LinkException("the HELLO factory failed: " + e.Message, e);
			}
			if (hello == null)
				throw new LinkException("the HELLO factory returned null");
			// the mode is the link's to say: a lockstep flag in threaded mode would make the sidecar ack everything
			hello.Flags = options.Lockstep ? hello.Flags | HelloFlagLockstep : hello.Flags & ~HelloFlagLockstep;
			return hello;
		}

		private ZmtpDealer Connect()
		{
			ZmtpDealer dealer = new ZmtpDealer
			{
				MaxFrameBytes = options.MaxFrameBytes,
				// a peer stuck in the middle of a frame, or not reading, is as lost as a silent one
				ReadTimeoutMs = options.HeartbeatTimeoutMs,
				WriteTimeoutMs = options.HeartbeatTimeoutMs,
			};
			try
			{
				dealer.Connect(Endpoint, options.ConnectTimeoutMs);
			}
			catch (Exception e)
			{
				dealer.Dispose();
				throw new LinkException("cannot connect to the sidecar at " + Endpoint + ": " + e.Message, e);
			}
			return dealer;
		}

		// The frames of a message with the connection's next seq, or null (dropped, counted) when it cannot be encoded.
		private byte[][] Encode(Connection conn, Message message)
		{
			try
			{
				byte[][] frames = options.Secret == null ? Codec.Encode(message, conn.NextSeq, WireTime.Now()) : Seal(conn, message);
				conn.NextSeq++;
				return frames;
			}
			catch (Exception e)
			{
				Drop(message);
				LogLimited("a " + message.Type + " message could not be encoded and was dropped: " + e.Message);
				return null;
			}
		}

		private bool Transmit(Connection conn, byte[][] frames)
		{
			try
			{
				conn.Dealer.Send(frames);
			}
			catch (Exception e)
			{
				MarkDown(conn, "sending to the sidecar failed: " + e.Message);
				return false;
			}
			Interlocked.Increment(ref sent);
			conn.LastSend = Stopwatch.GetTimestamp();
			return true;
		}

		// Receive one message or nothing within timeoutMs; false (and the connection down) when it failed.
		private bool Receive(Connection conn, int timeoutMs, out byte[][] frames)
		{
			frames = null;
			try
			{
				frames = conn.Dealer.Receive(timeoutMs);
				return true;
			}
			catch (ZmtpException e) when (e.IsProtocolViolation)
			{
				Interlocked.Increment(ref protocolErrors);
				MarkDown(conn, "the sidecar broke the ZMTP framing: " + e.Message);
			}
			catch (Exception e)
			{
				MarkDown(conn, "connection to the sidecar lost: " + e.Message);
			}
			return false;
		}

		// Remote mode: HELLO opens the connection's SessionAuth with a fresh nonce; everything after WELCOME is sealed
		// with the session's key (nothing else is sent before WELCOME: the queue waits for it).
		private byte[][] Seal(Connection conn, Message message)
		{
			if (message.Type == MsgType.Hello)
			{
				SessionAuth auth = new SessionAuth(options.Secret);
				conn.Auth = auth;
				return auth.SealHello((Hello)message, conn.NextSeq, WireTime.Now());
			}
			SessionAuth keyed = conn.Auth;
			if (keyed == null || !keyed.Established)
				throw new InvalidOperationException("remote mode: no session key before the sidecar's WELCOME");
			return keyed.Seal(message, conn.NextSeq, WireTime.Now());
		}

		// Remote mode: true, with the trailer taken off, for an authentic message of this connection's session; false
		// (dropped, counted, logged) for anything else, which is never acted on. One exception, an ERROR without a
		// trailer when it can only end the connection: before WELCOME (a refused HELLO has no key to be MAC'd with) and
		// SESSION_NO_HELLO (the sidecar no longer holds the session, so no key either). Both make the link redial and
		// nothing more, which is all an attacker on the path could do with a TCP reset anyway.
		private bool Authentic(Connection conn, byte[][] frames, out byte[][] plain)
		{
			plain = frames;
			Header header;
			try
			{
				header = Codec.DecodeHeader(frames != null && frames.Length > 0 ? frames[0] : null);
			}
			catch (ProtocolException)
			{
				return true;  // not a message at all: Handle counts and logs it as a protocol error
			}
			SessionAuth auth = conn.Auth;
			if (frames.Length != 3 || (header.Flags & Auth.FlagAuth) == 0)
			{
				if (header.Type == MsgType.Error && frames.Length == 2 && frames[1].Length >= 2
					&& (!conn.Welcomed || BitConverter.ToUInt16(frames[1], 0) == SessionNoHello))
					return true;
				return Unauthentic(header, "without its HMAC trailer");
			}
			if (auth == null)
				return Unauthentic(header, "before HELLO was sent");
			if (!auth.Established)
			{
				if (header.Type != MsgType.Welcome || !auth.OpenWelcome(frames))
					return Unauthentic(header, "that does not verify before the session (not the answer to our HELLO under our secret)");
			}
			else
			{
				string why = auth.Check(frames, header.Seq);
				if (why != null)
					return Unauthentic(header, why);
			}
			plain = new[] { frames[0], frames[1] };
			return true;
		}

		private bool Unauthentic(Header header, string why)
		{
			Interlocked.Increment(ref authFailures);
			LogLimited("dropped a " + header.Type + " message from the sidecar " + why + " (remote mode: never acted on)");
			return false;
		}

		private void Handle(Connection conn, byte[][] frames)
		{
			if (options.Secret != null && !Authentic(conn, frames, out frames))
				return;
			Header header;
			Message message;
			try
			{
				message = Codec.Decode(frames, out header);
			}
			catch (ProtocolException e)
			{
				Interlocked.Increment(ref protocolErrors);
				LogLimited("ignored a message from the sidecar that cannot be decoded: " + e.Message);
				return;
			}
			if (!FromSidecar(header.Type))
			{
				Interlocked.Increment(ref protocolErrors);
				LogLimited("ignored a " + header.Type + " message from the sidecar: only NT8 sends those");
				return;
			}
			Interlocked.Increment(ref received);
			Interlocked.Exchange(ref conn.LastSeqIn, (long)header.Seq);  // the codec keeps seq below 2^63
			if (header.TsEcho != 0)
				Volatile.Write(ref lastRoundTripMs, (WireTime.Now() - header.TsEcho) / (double)TimeSpan.TicksPerMillisecond);
			switch (header.Type)
			{
				case MsgType.Heartbeat:
					ulong ack = ((Heartbeat)message).AckSeq;
					if (ack > conn.HighestAck)
						conn.HighestAck = ack;
					if (!options.Lockstep)
					{
						Volatile.Write(ref conn.AckIn, (long)Math.Min(conn.HighestAck, long.MaxValue));
						if (stopping)
							lock (queueLock)
								Monitor.PulseAll(queueLock);  // Stop waits for this ack (DrainBeforeBye)
					}
					return;
				case MsgType.Welcome:
					Welcomed(conn, (Welcome)message);
					return;
				case MsgType.Error:
					Interlocked.Increment(ref errorsReceived);
					Error error = (Error)message;
					Notify(() => listener.OnCommand(header, message), "OnCommand");
					if (!conn.Welcomed)
						MarkDown(conn, "the sidecar refused HELLO: " + error.Text);
					else if (error.Code == SessionStandby)
						MarkDown(conn, "the sidecar stepped down to standby: " + error.Text);
					else if (error.Code == SessionNoHello)
						MarkDown(conn, "the sidecar has no session for this connection any more: " + error.Text);
					return;
				default:
					Notify(() => listener.OnCommand(header, message), "OnCommand");
					return;
			}
		}

		private void Welcomed(Connection conn, Welcome welcome)
		{
			if (conn.Welcomed)
			{
				Interlocked.Increment(ref protocolErrors);
				LogLimited("ignored a second WELCOME on one connection");
				return;
			}
			Interlocked.Exchange(ref sessionId, (long)welcome.SessionId);
			conn.PeerTimeoutMs = welcome.HeartbeatTimeoutMs;
			if (conn.HighestAck < 1)
				conn.HighestAck = 1;  // HELLO was seq 1, and this is its answer
			if (Volatile.Read(ref conn.AckIn) < 1)
				Volatile.Write(ref conn.AckIn, 1);
			int stale = 0;
			lock (queueLock)
			{
				// before the session: quotes queued while disconnected are stale; order events are kept
				if (queue.Count > 0)
				{
					Queue<Message> keep = new Queue<Message>(queue.Count);
					foreach (Message m in queue)
						if (!IsMarketData(m.Type))
							keep.Enqueue(m);
					stale = queue.Count - keep.Count;
					queue = keep;
					Volatile.Write(ref queued, keep.Count);
				}
				conn.Welcomed = true;
				Monitor.PulseAll(queueLock);
			}
			if (stale > 0)
				Interlocked.Add(ref droppedStale, stale);
			Interlocked.Exchange(ref failedDials, 0);
			bool again = Interlocked.Increment(ref sessions) > 1;
			if (again)
				Interlocked.Increment(ref reconnects);
			lock (stateLock)
			{
				if (conn.Alive && State != LinkState.Stopped)
					Volatile.Write(ref state, (int)LinkState.Connected);
				Monitor.PulseAll(stateLock);  // WaitConnected
			}
			Volatile.Write(ref failedInRound, 0);
			takeoverAwaited = false;
			Log((again ? "reconnected" : "connected") + " to the sidecar at " + Endpoint + ": session " + welcome.SessionId
				+ ", sidecar " + welcome.SidecarVersion + (options.Lockstep ? ", lockstep" : "")
				+ (stale > 0 ? "; " + stale + " queued market data messages from before the session were discarded" : ""));
			Notify(() => listener.OnWelcome(welcome), "OnWelcome");
		}

		// Close the connection once; the first reason sticks. True for the call that closed it.
		private bool MarkDown(Connection conn, string reason)
		{
			if (Interlocked.CompareExchange(ref conn.Down, 1, 0) != 0)
				return false;
			conn.DownReason = reason;
			if (!stopping)
				NextEndpoint(conn.Welcomed);
			try
			{
				conn.Dealer.Dispose();
			}
			catch (Exception) { }
			if (!stopping)
			{
				lastError = reason;
				SetState(LinkState.Down);
				if (conn.Welcomed)
					Log("link down: " + reason);
				else
					DialFailed("connection attempt failed: " + reason);
			}
			lock (queueLock)
				Monitor.PulseAll(queueLock);  // wake the writer
			return true;
		}

		// OnLinkDown once per lost session; not for an attempt that never had a session, not on Stop.
		private void ReportDown(Connection conn)
		{
			if (!conn.Welcomed || stopping || conn.Alive || Interlocked.Exchange(ref conn.Reported, 1) != 0)
				return;
			Interlocked.Increment(ref linkDowns);
			string reason = conn.DownReason;
			Notify(() => listener.OnLinkDown(reason), "OnLinkDown");
		}

		private void Notify(Action call, string what)
		{
			try
			{
				call();
			}
			catch (Exception e)
			{
				// the strategy's bug must not kill the link's thread (or, in lockstep, leave an ack unread)
				LogLimited("the listener's " + what + " threw " + e.GetType().Name + ": " + e.Message);
			}
		}

		// The first failure of a series is logged, then a reminder a minute: the sidecar may stay away for hours.
		private void DialFailed(string reason)
		{
			lastError = reason;
			long n = Interlocked.Increment(ref failedDials);
			long last = Interlocked.Read(ref lastDialLog);
			if (n > 1 && last != 0 && MsSince(last) < DialLogEveryMs)
				return;
			Interlocked.Exchange(ref lastDialLog, Stopwatch.GetTimestamp());
			LogLimited(n == 1 ? reason : reason + " (attempt " + n + "; retrying every " + options.BackoffMaxMs + " ms at most)");
		}

		private string Silence()
		{
			return "nothing heard from the sidecar for more than " + options.HeartbeatTimeoutMs + " ms";
		}

		private void SetState(LinkState s)
		{
			lock (stateLock)
				if (State != LinkState.Stopped)
					Volatile.Write(ref state, (int)s);
		}

		private static string[] ParseEndpoints(string list)
		{
			List<string> found = new List<string>();
			foreach (string part in list.Split(new[] { ',', ';', ' ' }, StringSplitOptions.RemoveEmptyEntries))
				found.Add(part.Trim());
			return found.ToArray();
		}

		// After a failed, refused or lost connection: dial the next endpoint of the list. A lost session starts a new
		// round (its sidecar may be gone for good; the other one may be taking over).
		private void NextEndpoint(bool hadSession)
		{
			if (hadSession)
				Volatile.Write(ref failedInRound, 0);
			Interlocked.Increment(ref failedInRound);
			Volatile.Write(ref endpointIndex, (Volatile.Read(ref endpointIndex) + 1) % endpoints.Length);
		}

		// True (and a new round begins) once every endpoint has failed since the last session.
		private bool EveryEndpointFailed()
		{
			if (Volatile.Read(ref failedInRound) < endpoints.Length)
				return false;
			Volatile.Write(ref failedInRound, 0);
			return true;
		}

		private static bool IsMarketData(MsgType t) { return t == MsgType.Tick || t == MsgType.Ticks || t == MsgType.Bar; }

		private static bool IsOrderEvent(MsgType t)
		{
			return t == MsgType.OrderUpdate || t == MsgType.Execution || t == MsgType.Position || t == MsgType.Account;
		}

		// A message that will never be sent: counted in Dropped, and in DroppedOrderEvents when it is one.
		private void Drop(Message message)
		{
			Interlocked.Increment(ref dropped);
			if (message != null && IsOrderEvent(message.Type))
				Interlocked.Increment(ref droppedOrderEvents);
		}

		private static bool Postable(MsgType t)
		{
			return t == MsgType.Tick || t == MsgType.Ticks || t == MsgType.Bar || t == MsgType.OrderUpdate || t == MsgType.Execution
				|| t == MsgType.Position || t == MsgType.Account || t == MsgType.Heartbeat;
		}

		private static bool FromSidecar(MsgType t)
		{
			return t == MsgType.Welcome || t == MsgType.Heartbeat || t == MsgType.Bracket || t == MsgType.Cancel || t == MsgType.Change
				|| t == MsgType.Flatten || t == MsgType.Error;
		}

		private static long MsSince(long timestamp) { return (Stopwatch.GetTimestamp() - timestamp) * 1000 / Stopwatch.Frequency; }

		private static long Deadline(int ms) { return Stopwatch.GetTimestamp() + ms * Stopwatch.Frequency / 1000; }

		private static int MsUntil(long deadline)
		{
			long ms = (deadline - Stopwatch.GetTimestamp()) * 1000 / Stopwatch.Frequency;
			return (int)Math.Max(0, Math.Min(int.MaxValue, ms));
		}

		private void Log(string line)
		{
			Action<string> log = options.Log;
			if (log == null)
				return;
			try
			{
				log("Nt8Bridge link: " + line);
			}
			catch (Exception) { }
		}

		// At most LogBurst lines per LogWindowMs, then one line that says how many were left out.
		private void LogLimited(string line)
		{
			string summary = null;
			bool emit;
			lock (logLock)
			{
				long now = Stopwatch.GetTimestamp();
				if ((now - logWindowStart) * 1000 / Stopwatch.Frequency > LogWindowMs)
				{
					if (logSuppressed > 0)
						summary = logSuppressed + " more lines in the last " + LogWindowMs / 1000 + " s were not logged (all were counted)";
					logWindowStart = now;
					logLines = 0;
					logSuppressed = 0;
				}
				emit = logLines < LogBurst;
				if (emit)
					logLines++;
				else
					logSuppressed++;
			}
			if (summary != null)
				Log(summary);
			if (emit)
				Log(line);
		}
	}
}
