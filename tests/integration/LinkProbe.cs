#region Using declarations
using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Threading;
using NinjaTrader.NinjaScript.AddOns.Nt8Bridge;
#endregion

// Test-only helpers for tests/integration/test_csharp_link.py; never shipped to NT8. A listener written in
// C# records callbacks on the link's own threads without a round trip into Python for each one, and the
// producers post from a C# loop so that the measured rate is the link's, not pythonnet's.
namespace Nt8BridgeTests
{
	public sealed class RecordingListener : ILinkListener
	{
		private static readonly DateTime Epoch = new DateTime(1970, 1, 1, 0, 0, 0, DateTimeKind.Utc);
		private readonly object gate = new object();
		private readonly List<ulong> sessionIds = new List<ulong>();
		private readonly List<string> downs = new List<string>();
		private readonly List<double> downWallMs = new List<double>();
		private readonly List<Message> commands = new List<Message>();
		private readonly List<string> events = new List<string>();
		private Message postOnError;
		private int downThreadId = -1, commandThreadId = -1;

		/// <summary>The link that a nested Post goes to.</summary>
		public BridgeLink Link;

		/// <summary>Posted once, from inside OnCommand, when the first ERROR arrives (lockstep re-entrancy).</summary>
		public void PostOnFirstError(Message message) { lock (gate) postOnError = message; }

		public int WelcomeCount { get { lock (gate) return sessionIds.Count; } }
		public int DownCount { get { lock (gate) return downs.Count; } }
		public int CommandCount { get { lock (gate) return commands.Count; } }
		public int DownThreadId { get { lock (gate) return downThreadId; } }
		public int CommandThreadId { get { lock (gate) return commandThreadId; } }
		public ulong SessionId(int i) { lock (gate) return sessionIds[i]; }
		public string Down(int i) { lock (gate) return downs[i]; }
		public double DownWallMs(int i) { lock (gate) return downWallMs[i]; }
		public Message Command(int i) { lock (gate) return commands[i]; }
		public string[] Events() { lock (gate) return events.ToArray(); }

		public void OnWelcome(Welcome welcome)
		{
			lock (gate)
			{
				sessionIds.Add(welcome.SessionId);
				events.Add("welcome");
			}
		}

		public void OnCommand(Header header, Message message)
		{
			Message nested = null;
			lock (gate)
			{
				commands.Add(message);
				commandThreadId = Thread.CurrentThread.ManagedThreadId;
				events.Add("command " + message.Type + " seq " + header.Seq);
				if (message.Type == MsgType.Error && postOnError != null)
				{
					nested = postOnError;
					postOnError = null;
				}
			}
			if (nested == null)
				return;
			lock (gate)
				events.Add("nested post");
			bool ok = Link.Post(nested);  // outside the lock: it dispatches further callbacks on this thread
			lock (gate)
				events.Add("nested post returned " + ok);
		}

		public void OnLinkDown(string reason)
		{
			lock (gate)
			{
				downs.Add(reason);
				downWallMs.Add((DateTime.UtcNow - Epoch).TotalMilliseconds);
				downThreadId = Thread.CurrentThread.ManagedThreadId;
				events.Add("down: " + reason);
			}
		}
	}

	/// <summary>Collects the link's log lines (LinkOptions.Log) so that a failing test can show them.</summary>
	public sealed class LogSink
	{
		private readonly List<string> lines = new List<string>();

		public Action<string> Action { get { return Add; } }

		public void Add(string line) { lock (lines) lines.Add(line); }

		public string[] Lines() { lock (lines) return lines.ToArray(); }
	}

	public static class Probe
	{
		public const long SessionTime = 15257898000000000L;  // 2018-05-08 14:30 UTC in wire units: ES is trading

		public static Func<Hello> HelloFactory(string instanceId)
		{
			return () =>
			{
				Hello h = new Hello { InstanceId = instanceId, Account = "Sim101", Flags = 0, HeartbeatMs = 1000, Nt8Clock = WireTime.Now(),
					Nt8Version = "8.1-test" };
				h.Instruments.Add(new InstrumentDecl { Name = "ES 06-18", TickSize = 0.25, PointValue = 50.0 });
				return h;
			};
		}

		public static Tick Tick(long volume, double price)
		{
			return new Tick { InstrumentId = 0, Kind = 0, Price = price, Volume = volume, Bid = double.NaN, Ask = double.NaN,
				TsExchange = SessionTime, TsReceive = SessionTime };
		}

		public static OrderUpdate OrderUpdate(string clientOrderId)
		{
			return new OrderUpdate { ClientOrderId = clientOrderId, Role = 1, Nt8OrderId = "nt8-1", InstrumentId = 0, State = 4,
				OrderType = 1, Side = 1, Quantity = 1, Filled = 0, LimitPrice = 2670.0, StopPrice = double.NaN,
				AvgFillPrice = double.NaN, TsEvent = SessionTime, ErrorCode = 0, Comment = "queued while the sidecar was down" };
		}

		/// <summary>Posts TICKs with Volume 1..n, waiting while the queue is full so that none is dropped.
		/// Returns the elapsed milliseconds.</summary>
		public static double PostTicksPaced(BridgeLink link, int n, int capacity)
		{
			Stopwatch sw = Stopwatch.StartNew();
			for (int i = 1; i <= n; i++)
			{
				while (link.Queued >= capacity)
					Thread.Sleep(0);
				if (!link.Post(Tick(i, 2670.0)))
					throw new InvalidOperationException("Post refused tick " + i);
			}
			return sw.Elapsed.TotalMilliseconds;
		}

		/// <summary>Posts n TICKs as fast as possible; returns how many Post accepted. The slowest single Post
		/// and the total time go to the out parameters.</summary>
		public static int PostTicks(BridgeLink link, int n, out double slowestPostMs, out double totalMs)
		{
			int accepted = 0;
			long slowest = 0;
			Stopwatch total = Stopwatch.StartNew();
			for (int i = 1; i <= n; i++)
			{
				long t0 = Stopwatch.GetTimestamp();
				if (link.Post(Tick(i, 2670.0)))
					accepted++;
				slowest = Math.Max(slowest, Stopwatch.GetTimestamp() - t0);
			}
			totalMs = total.Elapsed.TotalMilliseconds;
			slowestPostMs = slowest * 1000.0 / Stopwatch.Frequency;
			return accepted;
		}
	}
}
