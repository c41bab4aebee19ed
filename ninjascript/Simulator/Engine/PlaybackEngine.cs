#region Using declarations
using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Globalization;
using System.Reflection;
using NinjaTrader.Cbi;
using NinjaTrader.Data;
using NinjaTrader.NinjaScript;
using NinjaTrader.NinjaScript.DrawingTools;
#endregion

namespace Nt8Bridge.Simulator
{
	public sealed class PlaybackOptions
	{
		public string StrategyTypeName = "NinjaTrader.NinjaScript.Strategies.Nt8BridgeStrategy";
		public BarsPeriodType PeriodType = BarsPeriodType.Minute;  // the primary series (the chart's bars)
		public int PeriodValue = 1;
		public string TimeZoneId = "UTC";     // NT8's Tools > Options > General time zone: event times are shown in it
		public string AccountName = "Playback101";
		public double StartingCash = 100000;
		public int DrainMs = 250;             // free-running: how long to wait for the sidecar's last replies at the end
		public long MaxEvents = long.MaxValue;
		public bool EchoPrints;               // also write NT8's output window to stdout
		public bool RecordEventTimes;         // keep each event's wall time in the report (benchmarks)
		public double Speed;                  // NT8 Playback's speed: N plays N times faster than real time; 0 (default) as fast as possible
		public readonly FillModel Fill = new FillModel();
		public readonly Faults Faults = new Faults();
	}

	// Plays NT8 data files through a strategy the way NT8's Playback connection does: the lifecycle
	// in NT8's order, then every event in time order (market data, bar updates per Calculate mode,
	// fills of the simulated account), with work that other threads hand in through
	// TriggerCustomEvent run on this thread between events. Python starts it once through
	// pythonnet and reads the PlaybackReport at the end; nothing crosses into Python per tick.
	public sealed class PlaybackEngine : ISimHost
	{
		private sealed class Series
		{
			public int Instrument;
			public Bars Bars;
			public long Span;
			public double LastPrice = double.NaN;
		}

		private readonly PlaybackOptions options;
		private readonly List<Instrument> instruments = new List<Instrument>();
		private readonly List<Feed> feeds = new List<Feed>();
		private readonly List<Series> series = new List<Series>();
		private readonly Queue<KeyValuePair<Action<object>, object>> customEvents = new Queue<KeyValuePair<Action<object>, object>>();
		private readonly object customLock = new object();
		private TimeZoneInfo zone;
		private bool zoneIsUtc;
		private StrategyBase strategy;
		private SimExchange exchange;
		private PlaybackReport report;
		private BarsPeriod primaryPeriod;
		private bool stopped;
		private double[] lastTrade;
		private readonly Dictionary<string, string> parameters = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);

		public Action<long> Progress;     // called every ProgressEvery events with the count done
		public long ProgressEvery = 1 << 16;

		public PlaybackEngine(PlaybackOptions options)
		{
			this.options = options;
		}

		/// <summary>Declare an instrument; its index is the order of the calls. Tick size and point value come from the caller's instrument master.</summary>
		public int AddInstrument(string fullName, double tickSize, double pointValue)
		{
			if (!(tickSize > 0) || !(pointValue > 0))
				throw new ArgumentException("instrument " + fullName + ": tick size and point value must be positive");
			string root = fullName.Split(' ')[0];
			Instrument i = new Instrument
			{
				FullName = fullName, Index = instruments.Count,
				MasterInstrument = new MasterInstrument { Name = root, TickSize = tickSize, PointValue = pointValue },
			};
			instruments.Add(i);
			return i.Index;
		}

		/// <summary>A data file of a declared instrument (ticks, tick replay or minute bars).</summary>
		public void AddFile(string path, int instrument)
		{
			if (instrument < 0 || instrument >= instruments.Count)
				throw new ArgumentException("declare the instrument before its file: " + path);
			feeds.Add(Feed.Read(path, instrument, instruments[instrument].FullName));
		}

		/// <summary>How many events the files added so far hold.</summary>
		public long EventCount
		{
			get
			{
				long n = 0;
				foreach (Feed f in feeds)
					n += f.Events.LongLength;
				return n;
			}
		}

		/// <summary>A strategy parameter as NT8's UI would set it, by property name; the text is converted to the property's type.</summary>
		public void SetParameter(string name, string value) { parameters[name] = value; }

		public PlaybackReport Run(Assembly strategyAssembly)
		{
			Type type = strategyAssembly.GetType(options.StrategyTypeName, false);
			if (type == null || !typeof(StrategyBase).IsAssignableFrom(type))
				throw new ArgumentException("no strategy " + options.StrategyTypeName + " in " + strategyAssembly.GetName().Name);
			if (instruments.Count == 0 || feeds.Count == 0)
				throw new InvalidOperationException("nothing to play: add an instrument and its data file first");
			string[] names = new string[instruments.Count];
			for (int k = 0; k < names.Length; k++)
				names[k] = instruments[k].FullName;
			report = new PlaybackReport(names);
			zone = TimeZoneInfo.FindSystemTimeZoneById(options.TimeZoneId);
			zoneIsUtc = zone.BaseUtcOffset == TimeSpan.Zero && !zone.SupportsDaylightSavingTime;
			NinjaTrader.Core.Globals.GeneralOptions.TimeZoneInfo = zone;
			NinjaTrader.Core.Globals.NowSource = () => Display(exchange.Now);
			primaryPeriod = new BarsPeriod { BarsPeriodType = options.PeriodType, Value = options.PeriodValue };

			FeedEvent[] events = Feed.Merge(feeds);
			lastTrade = new double[instruments.Count];
			strategy = (StrategyBase)Activator.CreateInstance(type);
			strategy.Host = this;
			SimAccount account = new SimAccount { StartingCash = options.StartingCash };
			exchange = new SimExchange(instruments.ToArray(), options.Fill, options.Faults, account, Display, report) { Owner = strategy };
			report.Lockstep = options.Fill.OrderLatencyMs == 0;
			if (events.Length > 0)
				exchange.Now = events[0].Time;  // NT8's clock (Globals.Now) starts at the playback's start
			Stopwatch clock = Stopwatch.StartNew();
			try
			{
				if (Lifecycle(State.SetDefaults))
				{
					ApplyParameters();
					series.Add(new Series { Instrument = 0, Bars = NewBars(0, primaryPeriod), Span = primaryPeriod.Span100ns() });
					if (Lifecycle(State.Configure))
					{
						strategy.BarsArray = new Bars[series.Count];
						strategy.CurrentBars = new int[series.Count];
						strategy.Positions = new Position[series.Count];
						for (int s = 0; s < series.Count; s++)
						{
							strategy.BarsArray[s] = series[s].Bars;
							strategy.CurrentBars[s] = -1;
							strategy.Positions[s] = exchange.PositionOf(series[s].Instrument);
						}
						strategy.Account = new Account { Name = options.AccountName, Sim = account };
						if (Lifecycle(State.DataLoaded) && Lifecycle(State.Historical) && Lifecycle(State.Transition) && Lifecycle(State.Realtime))
							Play(events);
					}
				}
			}
			finally
			{
				if (strategy.State != State.Terminated)
					Lifecycle(State.Terminated);
				clock.Stop();
				report.ElapsedSeconds = clock.Elapsed.TotalSeconds;
				for (int k = 0; k < instruments.Count; k++)
					report.FinalPosition[k] = exchange.PositionOf(k).Signed;
				report.Finish();
			}
			return report;
		}

		private void Play(FeedEvent[] events)
		{
			long n = Math.Min(events.LongLength, options.MaxEvents);
			long wallStart = Stopwatch.GetTimestamp();
			for (long k = 0; k < n && !stopped; k++)
			{
				FeedEvent e = events[k];
				if (options.Speed > 0)
					Pace(wallStart, e.Time - events[0].Time);
				long started = Stopwatch.GetTimestamp();
				report.Events++;
				exchange.EventIndex = k;
				exchange.Advance(e.Time);
				RunCustomEvents();
				if (e.IsBar)
					PlayBar(ref e);
				else
					PlayTrade(ref e);
				// wall time of the whole event: in lockstep it holds the sidecar's round trips and
				// whatever the strategy did with the answers (bench/bench_nt8sim.py reads it)
				if (options.RecordEventTimes)
					report.EventMicros.Add((float)((Stopwatch.GetTimestamp() - started) * 1e6 / Stopwatch.Frequency));
				if (Progress != null && (k + 1) % ProgressEvery == 0)
					Progress(k + 1);
			}
			if (!stopped && options.Fill.OrderLatencyMs > 0)
			{
				// free-running: let the sidecar's answers to the last events arrive and run
				Stopwatch wait = Stopwatch.StartNew();
				while (!stopped && wait.ElapsedMilliseconds < options.DrainMs)
				{
					if (!RunCustomEvents())
						System.Threading.Thread.Sleep(5);
				}
			}
			if (Progress != null)
				Progress(n);
		}

		// Waits until an event is due at the playback's speed, running the sidecar's answers meanwhile
		// (free-running, they arrive while the market moves on, as they would live).
		private void Pace(long wallStart, long eventOffset100ns)
		{
			long due = wallStart + (long)(eventOffset100ns / options.Speed * Stopwatch.Frequency / TimeSpan.TicksPerSecond);
			while (!stopped)
			{
				long left = due - Stopwatch.GetTimestamp();
				if (left <= 0)
					return;
				if (!RunCustomEvents())
					System.Threading.Thread.Sleep((int)Math.Min(5, Math.Max(1, left * 1000 / Stopwatch.Frequency)));
			}
		}

		private void PlayTrade(ref FeedEvent e)
		{
			int i = e.Instrument;
			Instrument instrument = instruments[i];
			bool quoted = !double.IsNaN(e.Bid) && !double.IsNaN(e.Ask);
			double bid, ask;
			if (quoted)
			{
				bid = e.Bid;
				ask = e.Ask;
			}
			else
			{
				// Data without bid/ask: like NT8, the quote is built around the last price, one tick
				// wide: a trade up the book prints at the ask, one down the book at the bid.
				double tick = instrument.MasterInstrument.TickSize;
				bool upTick = !(e.Price < lastTrade[i]);
				bid = upTick ? e.Price - tick : e.Price;
				ask = upTick ? e.Price : e.Price + tick;
			}
			lastTrade[i] = e.Price;
			DateTime time = Display(e.Time);
			report.Trades++;
			exchange.OnQuote(i, bid, ask);
			exchange.OnTrade(i, e.Price, e.Volume);
			RunCustomEvents();
			if (stopped)
				return;
			if (quoted)
			{
				MarketData(instrument, MarketDataType.Bid, bid, 0, bid, ask, time);
				MarketData(instrument, MarketDataType.Ask, ask, 0, bid, ask, time);
			}
			MarketData(instrument, MarketDataType.Last, e.Price, e.Volume, bid, ask, time);
			for (int s = 0; s < series.Count && !stopped; s++)
			{
				Series sr = series[s];
				if (sr.Instrument != i)
					continue;
				long end = BarEnd(e.Time, sr.Span);
				bool first = sr.Bars.AddTrade(e.Time, Display(end), e.Price, e.Volume, end);
				BarUpdate(s, first, e.Price);
			}
		}

		private void PlayBar(ref FeedEvent e)
		{
			int i = e.Instrument;
			report.Bars++;
			// the fill model walks the bar as four trades: open, the nearer extreme, the other, close
			double[] path = e.Price >= e.Open ? new[] { e.Open, e.Low, e.High, e.Price } : new[] { e.Open, e.High, e.Low, e.Price };
			long share = Math.Max(1, e.Volume / 4);
			foreach (double p in path)
			{
				exchange.OnQuote(i, p, p);
				exchange.OnTrade(i, p, share);
				if (stopped)
					return;
			}
			RunCustomEvents();
			for (int s = 0; s < series.Count && !stopped; s++)
			{
				Series sr = series[s];
				if (sr.Instrument != i)
					continue;
				long end = BarEnd(e.Time, sr.Span);
				bool first;
				if (sr.Span == TimeSpan.TicksPerMinute)
				{
					sr.Bars.AddBar(Display(end), end, e.Open, e.High, e.Low, e.Price, e.Volume);
					first = true;
				}
				else
				{
					first = sr.Bars.AddTrade(e.Time, Display(end), e.Open, 0, end);
					sr.Bars.AddTrade(e.Time, Display(end), e.High, 0, end);
					sr.Bars.AddTrade(e.Time, Display(end), e.Low, 0, end);
					sr.Bars.AddTrade(e.Time, Display(end), e.Price, e.Volume, end);
				}
				BarUpdate(s, first, e.Price);
			}
		}

		private void MarketData(Instrument instrument, MarketDataType type, double price, long volume, double bid, double ask, DateTime time)
		{
			if (stopped)
				return;
			MarketDataEventArgs args = new MarketDataEventArgs
			{
				Instrument = instrument, MarketDataType = type, Price = price, Volume = volume, Bid = bid, Ask = ask, Time = time,
			};
			report.MarketDataEvents++;
			Guard("OnMarketData", () => strategy.RaiseMarketData(args));
			RunCustomEvents();
		}

		private void BarUpdate(int s, bool firstTickOfBar, double price)
		{
			Series sr = series[s];
			strategy.CurrentBars[s] = sr.Bars.Count - 1;
			bool call;
			switch (strategy.Calculate)
			{
				case Calculate.OnBarClose: call = firstTickOfBar && sr.Bars.Count > 1; break;
				case Calculate.OnPriceChange: call = firstTickOfBar || price != sr.LastPrice; break;
				default: call = true; break;
			}
			sr.LastPrice = price;
			if (!call)
				return;
			strategy.BarsInProgress = s;
			strategy.IsFirstTickOfBar = firstTickOfBar;
			report.BarUpdates++;
			Guard("OnBarUpdate", strategy.RaiseBarUpdate);
			RunCustomEvents();
		}

		// Runs what other threads handed in; true when anything ran.
		private bool RunCustomEvents()
		{
			bool ran = false;
			while (!stopped)
			{
				KeyValuePair<Action<object>, object> item;
				lock (customLock)
				{
					if (customEvents.Count == 0)
						break;
					item = customEvents.Dequeue();
				}
				report.CustomEvents++;
				ran = true;
				Guard("TriggerCustomEvent", () => item.Key(item.Value));
			}
			return ran;
		}

		private bool Lifecycle(State state)
		{
			return Guard("OnStateChange", () => strategy.RaiseStateChange(state));
		}

		// NT8 logs an exception thrown by a script's event method and disables the script.
		private bool Guard(string method, Action call)
		{
			try
			{
				call();
				return true;
			}
			catch (Exception ex)
			{
				if (report.StrategyError == null)
					report.StrategyError = "Error on calling '" + method + "' method: " + ex;
				if (!stopped)
				{
					stopped = true;
					if (strategy.State != State.Terminated && method != "OnStateChange")
					{
						try { strategy.RaiseStateChange(State.Terminated); }
						catch (Exception inner) { report.AddPrint("Terminated failed too: " + inner.Message); }
					}
				}
				return false;
			}
		}

		private void ApplyParameters()
		{
			foreach (KeyValuePair<string, string> kv in parameters)
			{
				PropertyInfo p = strategy.GetType().GetProperty(kv.Key, BindingFlags.Public | BindingFlags.Instance | BindingFlags.IgnoreCase);
				if (p == null || !p.CanWrite)
					throw new ArgumentException("the strategy has no settable parameter '" + kv.Key + "'");
				object value;
				if (p.PropertyType.IsEnum)
					value = Enum.Parse(p.PropertyType, kv.Value, true);
				else
					value = Convert.ChangeType(kv.Value, p.PropertyType, CultureInfo.InvariantCulture);
				p.SetValue(strategy, value, null);
			}
		}

		private Bars NewBars(int instrument, BarsPeriod period)
		{
			return new Bars { Instrument = instruments[instrument], BarsPeriod = period };
		}

		private static long BarEnd(long utcTicks, long span)
		{
			long r = utcTicks % span;
			return r == 0 ? utcTicks : utcTicks - r + span;
		}

		private DateTime Display(long utcTicks)
		{
			if (zoneIsUtc)
				return new DateTime(utcTicks, DateTimeKind.Unspecified);
			DateTime local = TimeZoneInfo.ConvertTimeFromUtc(new DateTime(utcTicks, DateTimeKind.Utc), zone);
			return DateTime.SpecifyKind(local, DateTimeKind.Unspecified);
		}

		// ------------------------------------------------------------------ ISimHost

		BarsPeriod ISimHost.PrimaryPeriod { get { return primaryPeriod; } }
		Instrument ISimHost.PrimaryInstrument { get { return instruments[0]; } }

		void ISimHost.Print(string text)
		{
			report.AddPrint(text);
			if (options.EchoPrints)
				Console.WriteLine(text);
		}

		void ISimHost.TriggerCustomEvent(Action<object> customEvent, object state)
		{
			lock (customLock)
				customEvents.Enqueue(new KeyValuePair<Action<object>, object>(customEvent, state));
		}

		void ISimHost.AddDataSeries(string instrumentName, BarsPeriod period)
		{
			Instrument found = instruments.Find(i => string.Equals(i.FullName, instrumentName, StringComparison.OrdinalIgnoreCase));
			if (found == null)
				throw new ArgumentException("AddDataSeries(\"" + instrumentName + "\") has no data in this playback: pass its file too (--data)");
			series.Add(new Series { Instrument = found.Index, Bars = NewBars(found.Index, period), Span = period.Span100ns() });
		}

		Order ISimHost.Submit(StrategyBase owner, int barsInProgress, OrderAction action, OrderType type, int quantity, double limitPrice,
			double stopPrice, string oco, string name)
		{
			if (barsInProgress < 0 || barsInProgress >= series.Count)
				throw new ArgumentOutOfRangeException("selectedBarsInProgress", "there are " + series.Count + " bar series");
			return exchange.Submit(series[barsInProgress].Instrument, action, type, quantity, limitPrice, stopPrice, oco, name);
		}

		void ISimHost.Change(StrategyBase owner, Order order, int quantity, double limitPrice, double stopPrice)
		{
			exchange.Change(order, quantity, limitPrice, stopPrice);
		}

		void ISimHost.Cancel(StrategyBase owner, Order order)
		{
			exchange.Cancel(order);
		}

		TextFixed ISimHost.DrawTextFixed(string tag, string text, TextPosition position)
		{
			report.ChartText[tag] = text;
			return new TextFixed { Tag = tag, Text = text, Position = position };
		}
	}
}
