#region Using declarations
using System;
using System.Collections.Generic;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using NinjaTrader.Cbi;
#endregion

namespace Nt8Bridge.Simulator
{
	public sealed class OrderRecord
	{
		public int Ordinal; public string OrderId; public string Name; public int Instrument; public string Action; public string Type;
		public int Quantity; public int Filled; public double LimitPrice; public double StopPrice; public string Oco;
		public string State; public double AverageFillPrice; public long SubmittedAtEvent;
	}

	public sealed class FillRecord
	{
		public string ExecutionId; public string OrderId; public string OrderName; public int Instrument; public string Action;
		public double Price; public int Quantity; public long TimeUtcTicks; public long EventIndex; public int PositionAfter;
		public double Commission;
	}

	// What a playback did, for the Python side (read once at the end; nothing crosses per tick).
	public sealed class PlaybackReport
	{
		public string[] InstrumentNames;
		public long Events, Trades, Bars, MarketDataEvents, BarUpdates, CustomEvents;
		public int OrdersRejected, ChangesRefused, OrderUpdatesDropped, ExecutionsFirst;
		public double ElapsedSeconds;
		public string StrategyError;     // the exception that stopped the strategy, like NT8's log line
		public bool Lockstep;
		public readonly List<OrderRecord> Orders = new List<OrderRecord>();
		public readonly List<FillRecord> Fills = new List<FillRecord>();
		public readonly List<string> Prints = new List<string>();
		public readonly List<float> EventMicros = new List<float>();   // per event, in event order
		public readonly Dictionary<string, string> ChartText = new Dictionary<string, string>();
		public double[] Realized, Commission;
		public int[] FinalPosition;
		public long PrintsDropped;

		private readonly Dictionary<string, OrderRecord> byId = new Dictionary<string, OrderRecord>();
		private readonly SHA256 sha = SHA256.Create();

		internal PlaybackReport(string[] instrumentNames)
		{
			InstrumentNames = instrumentNames;
			Realized = new double[instrumentNames.Length];
			Commission = new double[instrumentNames.Length];
			FinalPosition = new int[instrumentNames.Length];
		}

		public double EventsPerSecond { get { return ElapsedSeconds > 0 ? Events / ElapsedSeconds : 0; } }
		public string Digest { get; private set; }
		public OrderRecord[] OrderArray() { return Orders.ToArray(); }
		public FillRecord[] FillArray() { return Fills.ToArray(); }
		public string[] PrintArray() { return Prints.ToArray(); }
		public float[] EventMicrosArray() { return EventMicros.ToArray(); }
		public string[] ChartTextArray()
		{
			List<string> lines = new List<string>();
			foreach (KeyValuePair<string, string> kv in ChartText)
				lines.Add(kv.Value);
			return lines.ToArray();
		}

		internal void OnSubmit(Order o, long eventIndex)
		{
			OrderRecord r = new OrderRecord
			{
				Ordinal = o.Ordinal, OrderId = o.OrderId, Name = o.Name, Instrument = o.Instrument.Index, Action = o.OrderAction.ToString(),
				Type = o.OrderType.ToString(), Quantity = o.Quantity, LimitPrice = o.LimitPrice, StopPrice = o.StopPrice, Oco = o.Oco,
				State = o.OrderState.ToString(), SubmittedAtEvent = eventIndex,
			};
			Orders.Add(r);
			byId[o.OrderId] = r;
			// Names carry the sidecar's ids, which embed its session number: the digest uses the
			// order's ordinal and the role suffix so that two runs on fresh databases compare equal.
			Hash("O|" + eventIndex + "|" + o.Ordinal + "|" + Role(o.Name) + "|" + r.Action + "|" + r.Type + "|" + o.Quantity + "|" + F(o.LimitPrice) + "|" + F(o.StopPrice));
		}

		internal void OnState(Order o)
		{
			OrderRecord r;
			if (!byId.TryGetValue(o.OrderId, out r))
				return;
			r.State = o.OrderState.ToString();
			r.Quantity = o.Quantity;
			r.LimitPrice = o.LimitPrice;
			r.StopPrice = o.StopPrice;
			r.Filled = o.Filled;
			r.AverageFillPrice = o.AverageFillPrice;
			Hash("S|" + o.Ordinal + "|" + r.State + "|" + o.Quantity + "|" + F(o.LimitPrice) + "|" + F(o.StopPrice));
		}

		internal void OnFill(Order o, Execution e, long eventIndex, long utcTicks, int positionAfter)
		{
			Fills.Add(new FillRecord
			{
				ExecutionId = e.ExecutionId, OrderId = o.OrderId, OrderName = o.Name, Instrument = o.Instrument.Index, Action = o.OrderAction.ToString(),
				Price = e.Price, Quantity = e.Quantity, TimeUtcTicks = utcTicks, EventIndex = eventIndex, PositionAfter = positionAfter,
				Commission = e.Commission,
			});
			OrderRecord r;
			if (byId.TryGetValue(o.OrderId, out r))
			{
				r.Filled = o.Filled;
				r.AverageFillPrice = o.AverageFillPrice;
			}
			Hash("F|" + eventIndex + "|" + o.Ordinal + "|" + e.Quantity + "|" + F(e.Price) + "|" + positionAfter);
		}

		internal void AddRealized(int instrument, double amount) { Realized[instrument] += amount; }
		internal void AddCommission(int instrument, double amount) { Commission[instrument] += amount; }

		internal void AddPrint(string text)
		{
			if (Prints.Count < 10000)
				Prints.Add(text);
			else
				PrintsDropped++;
		}

		internal void Finish()
		{
			sha.TransformFinalBlock(new byte[0], 0, 0);
			StringBuilder hex = new StringBuilder();
			foreach (byte b in sha.Hash)
				hex.Append(b.ToString("x2"));
			Digest = hex.ToString();
		}

		private void Hash(string s)
		{
			byte[] bytes = Encoding.UTF8.GetBytes(s + "\n");
			sha.TransformBlock(bytes, 0, bytes.Length, null, 0);
		}

		private static string Role(string name)
		{
			int colon = name == null ? -1 : name.LastIndexOf(':');
			return colon < 0 ? "" : name.Substring(colon + 1);
		}

		private static string F(double v) { return v.ToString("R", CultureInfo.InvariantCulture); }
	}
}
