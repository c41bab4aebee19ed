#region Using declarations
using System;
using System.Collections.Generic;
using NinjaTrader.Cbi;
#endregion

// NinjaTrader.Data as the strategy sees it: market data events and bar series.
namespace NinjaTrader.Data
{
	public enum MarketDataType { Ask = 0, Bid = 1, DailyHigh = 3, DailyLow = 4, DailyVolume = 5, Last = 2, LastClose = 6, Opening = 7, OpenInterest = 8, Settlement = 9, Unknown = 10 }

	public enum BarsPeriodType { Tick, Volume, Range, Second, Minute, Day, Week, Month, Year }

	public class MarketDataEventArgs : EventArgs
	{
		public double Ask { get; internal set; }
		public double Bid { get; internal set; }
		public Instrument Instrument { get; internal set; }
		public bool IsReset { get; internal set; }
		public MarketDataType MarketDataType { get; internal set; }
		public double Price { get; internal set; }
		public DateTime Time { get; internal set; }
		public long Volume { get; internal set; }
	}

	public class BarsPeriod
	{
		public BarsPeriodType BarsPeriodType { get; set; }
		public int Value { get; set; }

		internal long Span100ns()
		{
			switch (BarsPeriodType)
			{
				case BarsPeriodType.Second: return Value * TimeSpan.TicksPerSecond;
				case BarsPeriodType.Minute: return Value * TimeSpan.TicksPerMinute;
				case BarsPeriodType.Day: return Value * TimeSpan.TicksPerDay;
				default: throw new NotSupportedException("the simulator builds Second, Minute and Day bars; " + BarsPeriodType + " is not simulated");
			}
		}
	}

	// A bar series, oldest bar at index 0 (the Get* methods take that absolute index, not barsAgo).
	public class Bars
	{
		public int Count { get { return times.Count; } }
		public Instrument Instrument { get; internal set; }
		public BarsPeriod BarsPeriod { get; internal set; }

		public double GetOpen(int index) { return opens[index]; }
		public double GetHigh(int index) { return highs[index]; }
		public double GetLow(int index) { return lows[index]; }
		public double GetClose(int index) { return closes[index]; }
		public long GetVolume(int index) { return volumes[index]; }
		public DateTime GetTime(int index) { return times[index]; }

		private readonly List<double> opens = new List<double>(), highs = new List<double>(), lows = new List<double>(), closes = new List<double>();
		private readonly List<long> volumes = new List<long>();
		private readonly List<DateTime> times = new List<DateTime>();  // bar end, in the display zone like NT8
		internal long CurrentEndUtc = long.MinValue;  // DateTime.Ticks (UTC) of the forming bar's end

		// Adds a trade; true when it opened a new bar (NT8's IsFirstTickOfBar).
		internal bool AddTrade(long utcTicks, DateTime displayEnd, double price, long volume, long barEndUtc)
		{
			if (barEndUtc != CurrentEndUtc)
			{
				CurrentEndUtc = barEndUtc;
				opens.Add(price); highs.Add(price); lows.Add(price); closes.Add(price); volumes.Add(volume); times.Add(displayEnd);
				return true;
			}
			int i = times.Count - 1;
			if (price > highs[i]) highs[i] = price;
			if (price < lows[i]) lows[i] = price;
			closes[i] = price;
			volumes[i] += volume;
			return false;
		}

		// Adds a whole bar read from a minute file.
		internal void AddBar(DateTime displayEnd, long barEndUtc, double open, double high, double low, double close, long volume)
		{
			CurrentEndUtc = barEndUtc;
			opens.Add(open); highs.Add(high); lows.Add(low); closes.Add(close); volumes.Add(volume); times.Add(displayEnd);
		}
	}
}
