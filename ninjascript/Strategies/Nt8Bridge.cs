#region Using declarations
using System;
using System.Collections.Generic;
using System.ComponentModel;
using System.ComponentModel.DataAnnotations;
using System.Globalization;
using NinjaTrader.Cbi;
using NinjaTrader.Data;
using NinjaTrader.NinjaScript;
using NinjaTrader.NinjaScript.DrawingTools;
using Wire = NinjaTrader.NinjaScript.AddOns.Nt8Bridge;
#endregion

// The nt8bridge strategy: streams this chart's market data, bars, orders, executions, positions and
// account values to the nt8bridge sidecar (Python) and executes the brackets it sends back.
// Unmanaged orders; brackets follow the Help Guide's pattern (entry; on its executions, stop and
// target in one fresh OCO group, sized to what has filled) and are reconciled from executions and
// order updates together, so that partial fills, rejects, missing or out-of-order updates and
// overfills leave the position protected or flat. Needs the AddOns\Nt8Bridge files (no DLL).
namespace NinjaTrader.NinjaScript.Strategies
{
	public enum SidecarLostAction
	{
		CancelEntries,
		Flatten,
		Keep
	}

	public class Nt8BridgeStrategy : Strategy, Wire.ILinkListener
	{
		private const string ChartTag = "nt8bridge";
		private const byte RoleEntry = 1, RoleStop = 2, RoleTarget = 3, RoleFlatten = 4;

		private Wire.BridgeLink link;
		private readonly List<Instrument> wireInstruments = new List<Instrument>();   // HELLO's list: index = instrument_id
		private readonly Dictionary<string, int> wireIdByName = new Dictionary<string, int>();
		private int[] seriesOfWireId;                                                  // instrument_id -> BarsInProgress
		private readonly Dictionary<string, Bracket> brackets = new Dictionary<string, Bracket>();
		private readonly Dictionary<string, Leg> legsByName = new Dictionary<string, Leg>();
		private readonly HashSet<string> executionsSeen = new HashSet<string>();
		// What was reported to the sidecar, replayed after every WELCOME: a sidecar that restarted, or the standby
		// that took over, learns each leg's last state and every fill, even those posted while no session was up
		// (a lockstep post without a session is dropped). The sidecar recognises the fills it already has by id.
		private const int ReplayMaxExecutions = 10000;
		private readonly Dictionary<string, Wire.OrderUpdate> lastUpdateByLeg = new Dictionary<string, Wire.OrderUpdate>();
		private readonly List<string> legOrder = new List<string>();
		private readonly List<Wire.Execution> executionsPosted = new List<Wire.Execution>();
		private int welcomes;
		private int flattenOrdinal;
		private bool linkUp;
		private string lastDecision = "none yet";
		private long commandsRefused, overfills, exitsRejected;

		#region OnStateChange
		protected override void OnStateChange()
		{
			if (State == State.SetDefaults)
			{
				Description = "Streams market data and order events to the nt8bridge sidecar and executes its bracket orders.";
				Name = "Nt8Bridge";
				Calculate = Calculate.OnEachTick;
				IsUnmanaged = true;
				BarsRequiredToTrade = 0;
				// Rejects and overfills are handled here (protect or flatten); NT8 must not stop the strategy for them.
				RealtimeErrorHandling = RealtimeErrorHandling.IgnoreAllErrors;
				IgnoreOverfill = true;
				StartBehavior = StartBehavior.WaitUntilFlat;
				SidecarEndpoint = "tcp://127.0.0.1:5555";
				InstanceName = "";
				ExtraInstruments = "";
				HeartbeatMs = 1000;
				HeartbeatTimeoutMs = 5000;
				OnSidecarLost = SidecarLostAction.CancelEntries;
				MaxPositionContracts = 5;
				SendQueueCapacity = 65536;
				SharedSecretFile = "";
				Lockstep = false;
				LockstepWindow = 1;
			}
			else if (State == State.Configure)
			{
				foreach (string name in ExtraInstrumentNames())
					AddDataSeries(name, BarsPeriod.BarsPeriodType, BarsPeriod.Value);
			}
			else if (State == State.DataLoaded)
			{
				MapInstruments();
			}
			else if (State == State.Realtime)
			{
				StartLink();
			}
			else if (State == State.Terminated)
			{
				if (link != null)
				{
					link.Stop("strategy disabled");
					link = null;
				}
			}
		}
		#endregion

		#region Market data and bars
		protected override void OnMarketData(MarketDataEventArgs marketDataUpdate)
		{
			if (link == null)
				return;
			byte kind;
			switch (marketDataUpdate.MarketDataType)
			{
				case MarketDataType.Last: kind = 0; break;
				case MarketDataType.Bid: kind = 1; break;
				case MarketDataType.Ask: kind = 2; break;
				default: return;
			}
			int id;
			if (!wireIdByName.TryGetValue(marketDataUpdate.Instrument.FullName, out id))
				return;
			long ts = WireTime(marketDataUpdate.Time);
			link.Post(new Wire.Tick
			{
				InstrumentId = (ushort)id, Kind = kind, Price = marketDataUpdate.Price, Volume = marketDataUpdate.Volume,
				Bid = marketDataUpdate.Bid, Ask = marketDataUpdate.Ask, TsExchange = ts, TsReceive = WireTime(NinjaTrader.Core.Globals.Now),
			});
		}

		protected override void OnBarUpdate()
		{
			// With Calculate.OnEachTick the first tick of a bar is the moment the previous bar closed.
			if (link == null || !IsFirstTickOfBar || CurrentBar < 1)
				return;
			if (LockstepWindow > 1)
				link.Flush();  // a bar close is when the sidecar decides: read its answers before going on
			Bars bars = BarsArray[BarsInProgress];
			int i = CurrentBar - 1;
			int id;
			if (!wireIdByName.TryGetValue(bars.Instrument.FullName, out id))
				return;
			link.Post(new Wire.Bar
			{
				InstrumentId = (ushort)id, PeriodS = (uint)PeriodSeconds(bars.BarsPeriod), Open = bars.GetOpen(i), High = bars.GetHigh(i),
				Low = bars.GetLow(i), Close = bars.GetClose(i), Volume = bars.GetVolume(i), TsClose = WireTime(bars.GetTime(i)),
			});
			if (BarsInProgress == 0)
				ShowStatus();
		}
		#endregion

		#region Orders, executions, positions
		protected override void OnOrderUpdate(Order order, double limitPrice, double stopPrice, int quantity, int filled,
			double averageFillPrice, OrderState orderState, DateTime time, ErrorCode error, string comment)
		{
			Leg leg;
			if (!legsByName.TryGetValue(order.Name, out leg))
				return;  // not one of ours
			if (leg.Order == null)
				leg.Order = order;  // Playback and some brokers report before SubmitOrderUnmanaged returns
			leg.OrderFilled = Math.Max(leg.OrderFilled, filled);
			Post(new Wire.OrderUpdate
			{
				ClientOrderId = leg.Bracket.Id, Role = leg.Role, Nt8OrderId = order.OrderId, InstrumentId = (ushort)leg.Bracket.WireId,
				State = WireState(orderState), OrderType = WireOrderType(order.OrderType), Side = WireSide(order.OrderAction),
				Quantity = quantity, Filled = filled, LimitPrice = limitPrice, StopPrice = stopPrice, AvgFillPrice = averageFillPrice,
				TsEvent = WireTime(time), ErrorCode = (ushort)error, Comment = comment ?? "",
			});
			if (orderState == OrderState.Rejected && leg.Role != RoleEntry)
			{
				// An exit the broker refused (e.g. a stop already through the market): never stay unprotected.
				exitsRejected++;
				Print("nt8bridge: " + leg.Name + " rejected (" + comment + "); closing the bracket's position at market");
				CloseBracket(leg.Bracket, "exit rejected");
			}
			Reconcile(leg.Bracket);
		}

		protected override void OnExecutionUpdate(Execution execution, string executionId, double price, int quantity,
			MarketPosition marketPosition, string orderId, DateTime time)
		{
			Leg leg;
			if (execution.Order == null || !legsByName.TryGetValue(execution.Order.Name, out leg))
				return;
			if (!executionsSeen.Add(executionId))
				return;  // a duplicate report of the same fill
			if (leg.Order == null)
				leg.Order = execution.Order;
			leg.ExecutedQuantity += quantity;
			Post(new Wire.Execution
			{
				ExecutionId = executionId, ClientOrderId = leg.Bracket.Id, Role = leg.Role, Nt8OrderId = orderId, InstrumentId = (ushort)leg.Bracket.WireId,
				Side = marketPosition == MarketPosition.Long ? (byte)1 : (byte)2, Price = price, Quantity = quantity,
				Commission = execution.Commission, TsEvent = WireTime(time),
			});
			Reconcile(leg.Bracket);
		}

		protected override void OnPositionUpdate(Position position, double averagePrice, int quantity, MarketPosition marketPosition)
		{
			int id;
			if (!wireIdByName.TryGetValue(position.Instrument.FullName, out id))
				return;
			Post(new Wire.Position
			{
				InstrumentId = (ushort)id, MarketPosition = marketPosition == MarketPosition.Long ? (byte)1 : marketPosition == MarketPosition.Short ? (byte)2 : (byte)0,
				Quantity = quantity, AvgPrice = averagePrice, TsEvent = WireTime(NinjaTrader.Core.Globals.Now),
			});
			PostAccount();
			CheckOverfill(id);
		}
		#endregion

		#region Commands from the sidecar (strategy thread, through TriggerCustomEvent)
		private void OnSidecarCommand(object state)
		{
			Wire.Message m = (Wire.Message)state;
			Wire.SubmitBracket bracket = m as Wire.SubmitBracket;
			if (bracket != null) { SubmitBracket(bracket); return; }
			Wire.CancelOrder cancel = m as Wire.CancelOrder;
			if (cancel != null) { CancelBracket(cancel); return; }
			Wire.ChangeOrder change = m as Wire.ChangeOrder;
			if (change != null) { ChangeBracket(change); return; }
			Wire.Flatten flatten = m as Wire.Flatten;
			if (flatten != null) { FlattenCommand(flatten); return; }
			Wire.Error error = m as Wire.Error;
			if (error != null)
				lastDecision = "sidecar refused seq " + error.OffendingSeq + ": " + error.Text;
		}

		private void SubmitBracket(Wire.SubmitBracket c)
		{
			string why = BracketRefusal(c);
			if (why != null)
			{
				commandsRefused++;
				lastDecision = "refused " + c.ClientOrderId + ": " + why;
				Print("nt8bridge: " + lastDecision);
				Post(new Wire.OrderUpdate
				{
					ClientOrderId = c.ClientOrderId, Role = RoleEntry, Nt8OrderId = "", InstrumentId = c.InstrumentId, State = 10 /* REJECTED */,
					OrderType = c.EntryType == 2 ? (byte)1 : c.EntryType == 3 ? (byte)2 : (byte)0, Side = c.Side, Quantity = c.Quantity,
					LimitPrice = c.EntryPrice, StopPrice = c.StopPrice, AvgFillPrice = double.NaN, TsEvent = WireTime(NinjaTrader.Core.Globals.Now),
					Comment = "refused by the NinjaScript: " + why,
				});
				ShowStatus();
				return;
			}
			Bracket b = new Bracket
			{
				Id = c.ClientOrderId, WireId = c.InstrumentId, Series = seriesOfWireId[c.InstrumentId], IsLong = c.Side == 1,
				Quantity = c.Quantity, StopPrice = c.StopPrice, TargetPrice = c.TargetPrice,
			};
			brackets[b.Id] = b;
			lastDecision = (b.IsLong ? "BUY " : "SELL ") + c.Quantity + " " + wireInstruments[c.InstrumentId].FullName + " stop " +
				Price(c.StopPrice) + " target " + Price(c.TargetPrice) + " (" + c.AlgorithmId + ")";
			OrderType type = c.EntryType == 2 ? OrderType.Limit : c.EntryType == 3 ? OrderType.StopMarket : OrderType.Market;
			b.Entry = NewLeg(b, RoleEntry, ":E");
			Order o = SubmitOrderUnmanaged(b.Series, b.IsLong ? OrderAction.Buy : OrderAction.SellShort, type, c.Quantity,
				type == OrderType.Limit ? c.EntryPrice : 0, type == OrderType.StopMarket ? c.EntryPrice : 0, "", b.Entry.Name);
			if (b.Entry.Order == null)
				b.Entry.Order = o;
			Reconcile(b);
			ShowStatus();
		}

		private string BracketRefusal(Wire.SubmitBracket c)
		{
			if (c.InstrumentId >= wireInstruments.Count)
				return "instrument_id " + c.InstrumentId + " is not in this strategy's HELLO";
			if (brackets.ContainsKey(c.ClientOrderId))
				return "client_order_id already used";
			if (c.Quantity <= 0 || (c.Side != 1 && c.Side != 2))
				return "quantity or side out of range";
			if (!(c.StopPrice > 0) || !(c.TargetPrice > 0) || double.IsInfinity(c.StopPrice) || double.IsInfinity(c.TargetPrice))
				return "stop and target must be positive prices";
			bool isLong = c.Side == 1;
			double reference = c.EntryType == 1 ? double.NaN : c.EntryPrice;
			if (c.EntryType != 1 && !(c.EntryPrice > 0))
				return "a limit or stop entry needs a positive entry price";
			if (!double.IsNaN(reference) && (isLong ? !(c.StopPrice < reference && c.TargetPrice > reference) : !(c.StopPrice > reference && c.TargetPrice < reference)))
				return "stop and target are not on either side of the entry";
			if (isLong ? !(c.StopPrice < c.TargetPrice) : !(c.StopPrice > c.TargetPrice))
				return "stop and target are the wrong way round";
			int series = seriesOfWireId[c.InstrumentId];
			int exposure = Math.Abs(Signed(Positions[series])) + WorkingEntryQuantity(c.InstrumentId) + c.Quantity;
			if (exposure > MaxPositionContracts)
				return "local position cap: " + exposure + " contracts would exceed " + MaxPositionContracts;
			return null;
		}

		private void CancelBracket(Wire.CancelOrder c)
		{
			Bracket b;
			if (!brackets.TryGetValue(c.ClientOrderId, out b))
			{
				commandsRefused++;
				return;
			}
			lastDecision = "cancel " + b.Id + ": " + c.Reason;
			CancelIfLive(b.Entry);
			// The exits protect what has filled: a CANCEL never leaves a position naked (FLATTEN closes it).
			Reconcile(b);
			ShowStatus();
		}

		private void ChangeBracket(Wire.ChangeOrder c)
		{
			Bracket b;
			if (!brackets.TryGetValue(c.ClientOrderId, out b))
			{
				commandsRefused++;
				return;
			}
			Leg leg = c.Role == RoleEntry ? b.Entry : c.Role == RoleStop ? b.Stop : c.Role == RoleTarget ? b.Target : null;
			if (c.Role == RoleStop && c.StopPrice > 0) b.StopPrice = c.StopPrice;
			if (c.Role == RoleTarget && c.LimitPrice > 0) b.TargetPrice = c.LimitPrice;
			lastDecision = "change " + b.Id + " role " + c.Role;
			if (leg == null || !IsChangeable(leg.Order))
				return;  // applied when the leg is (re)submitted; a leg being cancelled must not be changed
			int quantity = c.Role == RoleEntry && c.Quantity > 0 ? c.Quantity : leg.Order.Quantity;
			double limit = c.LimitPrice > 0 ? c.LimitPrice : leg.Order.LimitPrice;
			double stop = c.StopPrice > 0 ? c.StopPrice : leg.Order.StopPrice;
			ChangeOrder(leg.Order, quantity, limit, stop);
		}

		private void FlattenCommand(Wire.Flatten c)
		{
			lastDecision = "FLATTEN " + (c.InstrumentId == Wire.Flatten.AllInstruments ? "all" : "instrument " + c.InstrumentId) + ": " + c.Reason;
			for (int id = 0; id < wireInstruments.Count; id++)
				if (c.InstrumentId == Wire.Flatten.AllInstruments || c.InstrumentId == id)
					FlattenInstrument(id, c.Reason);
			ShowStatus();
		}
		#endregion

		#region Bracket bookkeeping
		private sealed class Leg
		{
			public Bracket Bracket;
			public byte Role;
			public string Name;
			public Order Order;
			public int ExecutedQuantity;   // from executions, each counted once
			public int OrderFilled;        // from order updates (an execution report may be missing)
			public int Filled { get { return Math.Max(ExecutedQuantity, OrderFilled); } }
			public bool IsDone { get { return Order != null && Order.IsTerminalState(Order.OrderState); } }
		}

		private sealed class Bracket
		{
			public string Id;
			public int WireId, Series, Quantity, OcoGeneration;
			public bool IsLong, Closing, PlacingExits;
			public double StopPrice, TargetPrice;
			public Leg Entry, Stop, Target;
			public readonly List<Leg> Exits = new List<Leg>();   // every exit leg ever placed, for the filled total
			public int ExitFilled { get { int n = 0; foreach (Leg l in Exits) n += l.Filled; return n; } }
			public int Open { get { return Entry.Filled - ExitFilled; } }
		}

		private Leg NewLeg(Bracket b, byte role, string suffix)
		{
			Leg leg = new Leg { Bracket = b, Role = role, Name = "nb:" + b.Id + suffix };
			legsByName[leg.Name] = leg;
			if (role != RoleEntry)
				b.Exits.Add(leg);
			return leg;
		}

		// Brings the exits in line with what the entry has filled: placed after the first fill,
		// resized on partial fills, cancelled when nothing is left open.
		private void Reconcile(Bracket b)
		{
			if (b.Entry == null || b.Entry.Role == RoleFlatten || b.PlacingExits)
				return;  // a flatten order has no exits; exits being placed are settled by PlaceExits
			int open = b.Open;
			if (open < 0)
			{
				overfills++;
				Print("nt8bridge: bracket " + b.Id + " exits filled " + (-open) + " more than the entry; flattening");
				FlattenInstrument(b.WireId, "overfill");
				return;
			}
			if (open == 0 || b.Closing)
			{
				if (open == 0)
				{
					CancelIfLive(b.Stop);
					CancelIfLive(b.Target);
				}
				return;
			}
			bool stopLive = IsLive(b.Stop), targetLive = IsLive(b.Target);
			if (!stopLive && !targetLive)
			{
				if (Pending(b.Stop) || Pending(b.Target))
					return;  // being cancelled or changed: wait for its final state
				PlaceExits(b, open);
				return;
			}
			if (!stopLive || !targetLive)
			{
				// one exit is gone (filled or cancelled by someone else) while a position remains:
				// cancel the survivor and place a fresh pair when it is done
				CancelIfLive(stopLive ? b.Stop : b.Target);
				return;
			}
			Resize(b.Stop, open);
			Resize(b.Target, open);
		}

		private void PlaceExits(Bracket b, int open)
		{
			string oco = "nb:" + b.Id + ":oco" + (++b.OcoGeneration);
			OrderAction exit = b.IsLong ? OrderAction.Sell : OrderAction.BuyToCover;
			// Order events fire inside SubmitOrderUnmanaged (Playback101, some brokers): the flag keeps
			// Reconcile from judging a pair that is half placed.
			b.PlacingExits = true;
			try
			{
				b.Stop = NewLeg(b, RoleStop, ":S" + b.OcoGeneration);
				Order s = SubmitOrderUnmanaged(b.Series, exit, OrderType.StopMarket, open, 0, b.StopPrice, oco, b.Stop.Name);
				if (b.Stop.Order == null) b.Stop.Order = s;
				if (b.Closing)
					return;  // the stop was refused and the bracket is being closed at market
				b.Target = NewLeg(b, RoleTarget, ":T" + b.OcoGeneration);
				Order t = SubmitOrderUnmanaged(b.Series, exit, OrderType.Limit, open, b.TargetPrice, 0, oco, b.Target.Name);
				if (b.Target.Order == null) b.Target.Order = t;
			}
			finally
			{
				b.PlacingExits = false;
			}
			Reconcile(b);  // settle anything that happened while placing (a fill of the new exits)
		}

		private void Resize(Leg leg, int open)
		{
			if (!IsChangeable(leg.Order) || leg.Order.Quantity - leg.Order.Filled == open)
				return;
			ChangeOrder(leg.Order, leg.Order.Filled + open, leg.Order.LimitPrice, leg.Order.StopPrice);
		}

		// Closes what a bracket holds at market, after cancelling its exits.
		private void CloseBracket(Bracket b, string reason)
		{
			b.Closing = true;
			CancelIfLive(b.Entry);
			CancelIfLive(b.Stop);
			CancelIfLive(b.Target);
			int open = b.Open;
			if (open <= 0)
				return;
			Leg close = NewLeg(b, RoleFlatten, ":X" + (++flattenOrdinal));
			Order o = SubmitOrderUnmanaged(b.Series, b.IsLong ? OrderAction.Sell : OrderAction.BuyToCover, OrderType.Market, open, 0, 0, "", close.Name);
			if (close.Order == null) close.Order = o;
			lastDecision = "closed " + b.Id + ": " + reason;
		}

		// Cancels every order of the instrument and closes its whole position at market.
		private void FlattenInstrument(int wireId, string reason)
		{
			int series = seriesOfWireId[wireId];
			foreach (Bracket b in brackets.Values)
			{
				if (b.WireId != wireId)
					continue;
				b.Closing = true;
				CancelIfLive(b.Entry);
				CancelIfLive(b.Stop);
				CancelIfLive(b.Target);
			}
			int position = Signed(Positions[series]);
			if (position == 0 || FlattenWorking(wireId))
				return;
			Bracket f = new Bracket { Id = "flatten" + (++flattenOrdinal), WireId = wireId, Series = series, IsLong = position < 0, Closing = true };
			f.Entry = NewLeg(f, RoleFlatten, ":F");
			brackets[f.Id] = f;
			Order o = SubmitOrderUnmanaged(series, position > 0 ? OrderAction.Sell : OrderAction.BuyToCover, OrderType.Market, Math.Abs(position), 0, 0, "", f.Entry.Name);
			if (f.Entry.Order == null) f.Entry.Order = o;
			Print("nt8bridge: flatten " + wireInstruments[wireId].FullName + " (" + reason + "): " + position + " contracts at market");
		}

		private bool FlattenWorking(int wireId)
		{
			foreach (Bracket b in brackets.Values)
				if (b.WireId == wireId && b.Entry != null && b.Entry.Role == RoleFlatten && !b.Entry.IsDone)
					return true;
			return false;
		}

		// The account position disagrees with what our brackets hold (an overfill, a fill we never
		// heard of): close the instrument rather than trade on a wrong belief.
		private void CheckOverfill(int wireId)
		{
			// Order, execution and position reports can arrive in any order: a position is suspect
			// only when no report still on its way could explain it. Entries still working may
			// add to it; exits may bring it back toward flat, never through it.
			int held = 0, longEntries = 0, shortEntries = 0;
			foreach (Bracket b in brackets.Values)
			{
				if (b.WireId != wireId || b.Entry == null)
					continue;
				if (b.Entry.Role == RoleFlatten)
				{
					if (!b.Entry.IsDone)
						return;  // a flatten is on its way
					continue;
				}
				held += (b.IsLong ? 1 : -1) * b.Open;
				if (!b.Entry.IsDone && b.Entry.Order != null)
				{
					int remaining = b.Entry.Order.Quantity - b.Entry.Filled;
					if (b.IsLong) longEntries += remaining; else shortEntries += remaining;
				}
			}
			int actual = Signed(Positions[seriesOfWireId[wireId]]);
			int low = Math.Min(held, 0) - shortEntries, high = Math.Max(held, 0) + longEntries;
			if (actual >= low && actual <= high)
				return;
			overfills++;
			Print("nt8bridge: position " + actual + " but brackets hold " + held + "; flattening " + wireInstruments[wireId].FullName);
			FlattenInstrument(wireId, "position mismatch");
		}

		private int WorkingEntryQuantity(int wireId)
		{
			int n = 0;
			foreach (Bracket b in brackets.Values)
				if (b.WireId == wireId && b.Entry != null && b.Entry.Role == RoleEntry && !b.Entry.IsDone && b.Entry.Order != null)
					n += b.Entry.Order.Quantity - b.Entry.Order.Filled;
			return n;
		}

		private void CancelIfLive(Leg leg)
		{
			if (leg != null && leg.Order != null && !leg.IsDone && leg.Order.OrderState != OrderState.CancelPending
				&& leg.Order.OrderState != OrderState.CancelSubmitted)
				CancelOrder(leg.Order);
		}

		private static bool IsLive(Leg leg)
		{
			if (leg == null || leg.Order == null)
				return false;
			OrderState s = leg.Order.OrderState;
			return s == OrderState.Working || s == OrderState.Accepted || s == OrderState.PartFilled || s == OrderState.Submitted
				|| s == OrderState.TriggerPending || s == OrderState.ChangePending || s == OrderState.ChangeSubmitted;
		}

		private static bool Pending(Leg leg)
		{
			return leg != null && leg.Order != null && (leg.Order.OrderState == OrderState.CancelPending || leg.Order.OrderState == OrderState.CancelSubmitted);
		}

		// ChangeOrder is refused while a cancel or a change is on its way (brokers reject it).
		private static bool IsChangeable(Order o)
		{
			if (o == null)
				return false;
			OrderState s = o.OrderState;
			return s == OrderState.Working || s == OrderState.Accepted || s == OrderState.PartFilled;
		}

		private static int Signed(Position p)
		{
			return p.MarketPosition == MarketPosition.Long ? p.Quantity : p.MarketPosition == MarketPosition.Short ? -p.Quantity : 0;
		}
		#endregion

		#region Link to the sidecar
		private void StartLink()
		{
			Wire.LinkOptions options = new Wire.LinkOptions
			{
				Endpoint = SidecarEndpoint, HeartbeatMs = HeartbeatMs, HeartbeatTimeoutMs = HeartbeatTimeoutMs, SendQueueCapacity = SendQueueCapacity,
				Lockstep = Lockstep, LockstepTimeoutMs = HeartbeatTimeoutMs, LockstepWindow = LockstepWindow, Log = text => Print(text),
			};
			// remote mode: unreadable is an error (LinkException says what to do), never a fallback to no authentication
			options.Secret = string.IsNullOrWhiteSpace(SharedSecretFile) ? null : Wire.Auth.ReadSecretFile(SharedSecretFile.Trim());
			link = new Wire.BridgeLink(options, MakeHello, this);
			try
			{
				link.Start();
			}
			catch (Exception ex)
			{
				Print("nt8bridge: " + ex.Message);
				link = null;
				if (Lockstep)
					throw;  // a playback without its sidecar would only pretend to run
				Draw.TextFixed(this, ChartTag, "nt8bridge: NOT CONNECTED\n" + ex.Message, TextPosition.TopRight);
				return;
			}
			// Threaded: wait for the session, or the first ticks would be queued before WELCOME and discarded as
			// stale. A localhost connect takes milliseconds; this blocks NT8's move to Realtime for at most
			// ConnectTimeoutMs (2 s) when the sidecar is away, and then the link keeps trying in the background.
			if (!Lockstep && !link.WaitConnected(options.ConnectTimeoutMs))
				Print("nt8bridge: no session with the sidecar at " + SidecarEndpoint + " after " + options.ConnectTimeoutMs
					+ " ms; going on, the link keeps trying in the background");
			ShowStatus();
		}

		private Wire.Hello MakeHello()
		{
			Wire.Hello h = new Wire.Hello
			{
				InstanceId = InstanceName.Length > 0 ? InstanceName : Name + "/" + Instrument.FullName, Account = Account.Name,
				HeartbeatMs = (uint)HeartbeatMs, Nt8Clock = WireTime(NinjaTrader.Core.Globals.Now), Nt8Version = "NinjaTrader 8 / nt8bridge NinjaScript 0.1",
			};
			foreach (Instrument i in wireInstruments)
				h.Instruments.Add(new Wire.InstrumentDecl { Name = i.FullName, TickSize = i.MasterInstrument.TickSize, PointValue = i.MasterInstrument.PointValue });
			return h;
		}

		private void Post(Wire.Message m)
		{
			Remember(m);
			if (link != null)
				link.Post(m);
		}

		private void Remember(Wire.Message m)
		{
			Wire.OrderUpdate u = m as Wire.OrderUpdate;
			if (u != null)
			{
				string key = u.ClientOrderId + "/" + u.Role + "/" + u.Nt8OrderId;
				if (!lastUpdateByLeg.ContainsKey(key))
					legOrder.Add(key);
				lastUpdateByLeg[key] = u;
				return;
			}
			Wire.Execution e = m as Wire.Execution;
			if (e != null)
			{
				if (executionsPosted.Count >= ReplayMaxExecutions)
					executionsPosted.RemoveAt(0);
				executionsPosted.Add(e);
			}
		}

		// After a reconnect: each leg's last state (entries before their fills, so that a sidecar which never stored a
		// bracket can take it on from its entry), every fill, then the positions and the account.
		private void ReplayToSidecar()
		{
			if (link == null)
				return;
			foreach (string key in legOrder)
				link.Post(lastUpdateByLeg[key]);
			foreach (Wire.Execution e in executionsPosted)
				link.Post(e);
			for (int id = 0; id < wireInstruments.Count; id++)
			{
				Position p = Positions[seriesOfWireId[id]];
				link.Post(new Wire.Position
				{
					InstrumentId = (ushort)id, MarketPosition = p.MarketPosition == MarketPosition.Long ? (byte)1 : p.MarketPosition == MarketPosition.Short ? (byte)2 : (byte)0,
					Quantity = p.Quantity, AvgPrice = p.AveragePrice, TsEvent = WireTime(NinjaTrader.Core.Globals.Now),
				});
			}
			Print("nt8bridge: replayed " + legOrder.Count + " order states and " + executionsPosted.Count + " fills to the sidecar");
		}

		private void PostAccount()
		{
			Post(new Wire.Account
			{
				Name = Account.Name, CashValue = Account.Get(AccountItem.CashValue, Currency.UsDollar),
				RealizedPnl = Account.Get(AccountItem.RealizedProfitLoss, Currency.UsDollar),
				UnrealizedPnl = Account.Get(AccountItem.UnrealizedProfitLoss, Currency.UsDollar),
				BuyingPower = Account.Get(AccountItem.BuyingPower, Currency.UsDollar), TsEvent = WireTime(NinjaTrader.Core.Globals.Now),
			});
		}

		// ILinkListener: these run on the link's thread (or inside Post in lockstep); the work is
		// handed to the strategy thread, where NT8's order methods may be called.
		public void OnWelcome(Wire.Welcome welcome)
		{
			linkUp = true;
			bool again = ++welcomes > 1;
			TriggerCustomEvent(o => { if (again) ReplayToSidecar(); PostAccount(); ShowStatus(); }, null);
		}

		public void OnCommand(Wire.Header header, Wire.Message message)
		{
			TriggerCustomEvent(OnSidecarCommand, message);
		}

		public void OnLinkDown(string reason)
		{
			linkUp = false;
			TriggerCustomEvent(o => SidecarLost((string)o), reason);
		}

		private void SidecarLost(string reason)
		{
			Print("nt8bridge: sidecar lost (" + reason + "); applying " + OnSidecarLost);
			lastDecision = "sidecar lost: " + OnSidecarLost;
			if (OnSidecarLost == SidecarLostAction.Flatten)
			{
				for (int id = 0; id < wireInstruments.Count; id++)
					FlattenInstrument(id, "sidecar lost");
			}
			else if (OnSidecarLost == SidecarLostAction.CancelEntries)
			{
				foreach (Bracket b in brackets.Values)
				{
					if (b.Entry != null && b.Entry.Role == RoleEntry)
						CancelIfLive(b.Entry);
				}
			}
			ShowStatus();
		}
		#endregion

		#region Chart display
		private void ShowStatus()
		{
			string state = link == null ? "NOT CONNECTED" : linkUp && link.IsConnected ? "connected" : "RECONNECTING";
			string text = "nt8bridge: " + state;
			if (link != null)
				text += string.Format(CultureInfo.InvariantCulture, "  rtt {0:0.0} ms", link.LastRoundTripMs);
			text += "\nlast: " + lastDecision;
			if (commandsRefused + overfills + exitsRejected > 0)
				text += "\nrefused " + commandsRefused + "  overfills " + overfills + "  exits rejected " + exitsRejected;
			Draw.TextFixed(this, ChartTag, text, TextPosition.TopRight);
		}
		#endregion

		#region Helpers
		private void MapInstruments()
		{
			seriesOfWireId = new int[BarsArray.Length];
			for (int s = 0; s < BarsArray.Length; s++)
			{
				Instrument i = BarsArray[s].Instrument;
				if (wireIdByName.ContainsKey(i.FullName))
					continue;
				wireIdByName[i.FullName] = wireInstruments.Count;
				seriesOfWireId[wireInstruments.Count] = s;
				wireInstruments.Add(i);
			}
		}

		private List<string> ExtraInstrumentNames()
		{
			List<string> names = new List<string>();
			foreach (string part in (ExtraInstruments ?? "").Split(new[] { ',', ';' }, StringSplitOptions.RemoveEmptyEntries))
				if (part.Trim().Length > 0)
					names.Add(part.Trim());
			return names;
		}

		// NT8 times are in the zone of Tools > Options > General; the wire carries UTC.
		private static long WireTime(DateTime time)
		{
			DateTime utc = time.Kind == DateTimeKind.Utc ? time
				: TimeZoneInfo.ConvertTimeToUtc(DateTime.SpecifyKind(time, DateTimeKind.Unspecified), NinjaTrader.Core.Globals.GeneralOptions.TimeZoneInfo);
			return Wire.WireTime.FromDateTime(utc);
		}

		private static int PeriodSeconds(BarsPeriod period)
		{
			switch (period.BarsPeriodType)
			{
				case BarsPeriodType.Second: return period.Value;
				case BarsPeriodType.Minute: return period.Value * 60;
				case BarsPeriodType.Day: return period.Value * 86400;
				default: return 0;  // tick, volume and range bars have no fixed length
			}
		}

		private static byte WireState(OrderState s)
		{
			switch (s)
			{
				case OrderState.Initialized: return 0;
				case OrderState.Submitted: return 1;
				case OrderState.Accepted: return 2;
				case OrderState.TriggerPending: return 3;
				case OrderState.Working: return 4;
				case OrderState.ChangePending: return 5;
				case OrderState.ChangeSubmitted: return 6;
				case OrderState.CancelPending: return 7;
				case OrderState.CancelSubmitted: return 8;
				case OrderState.Cancelled: return 9;
				case OrderState.Rejected: return 10;
				case OrderState.PartFilled: return 11;
				case OrderState.Filled: return 12;
				default: return 13;
			}
		}

		private static byte WireOrderType(OrderType t)
		{
			switch (t)
			{
				case OrderType.Limit: return 1;
				case OrderType.StopMarket: return 2;
				case OrderType.StopLimit: return 3;
				case OrderType.MIT: return 4;
				default: return 0;
			}
		}

		private static byte WireSide(OrderAction a)
		{
			return a == OrderAction.Buy || a == OrderAction.BuyToCover ? (byte)1 : (byte)2;
		}

		private static string Price(double p) { return p.ToString("0.00##", CultureInfo.InvariantCulture); }
		#endregion

		#region Properties
		[NinjaScriptProperty]
		[Display(Name = "Sidecar endpoint", Description = "ZeroMQ endpoint of the nt8bridge sidecar; for a hot-standby pair both, comma separated (tcp://10.0.0.5:5555,tcp://10.0.0.6:5555)", Order = 1, GroupName = "1. Sidecar")]
		public string SidecarEndpoint { get; set; }

		[NinjaScriptProperty]
		[Display(Name = "Instance name", Description = "Name of this strategy instance at the sidecar (empty: strategy/instrument)", Order = 2, GroupName = "1. Sidecar")]
		public string InstanceName { get; set; }

		[NinjaScriptProperty]
		[Display(Name = "Extra instruments", Description = "More instruments to stream, comma separated (e.g. NQ 12-23)", Order = 3, GroupName = "1. Sidecar")]
		public string ExtraInstruments { get; set; }

		[NinjaScriptProperty]
		[Range(100, 60000)]
		[Display(Name = "Heartbeat (ms)", Description = "Send a heartbeat after this long without other traffic", Order = 4, GroupName = "1. Sidecar")]
		public int HeartbeatMs { get; set; }

		[NinjaScriptProperty]
		[Range(500, 600000)]
		[Display(Name = "Heartbeat timeout (ms)", Description = "The sidecar is lost after this long without a word from it", Order = 5, GroupName = "1. Sidecar")]
		public int HeartbeatTimeoutMs { get; set; }

		[NinjaScriptProperty]
		[Range(1000, 10000000)]
		[Display(Name = "Send queue (messages)", Description = "Messages held while the sidecar is slow or away; beyond it they are dropped and counted", Order = 6, GroupName = "1. Sidecar")]
		public int SendQueueCapacity { get; set; }

		// A path, not the secret: NT8 saves properties in its workspace XML, and the secret must stay in its own file.
		[NinjaScriptProperty]
		[Display(Name = "Shared secret file", Description = "Remote mode: a copy of the sidecar's secret file (nt8bridge secret new FILE); every message is then authenticated both ways. Empty for a sidecar on this machine", Order = 7, GroupName = "1. Sidecar")]
		public string SharedSecretFile { get; set; }

		[NinjaScriptProperty]
		[Display(Name = "When the sidecar is lost", Description = "Cancel working entries, flatten everything, or keep orders as they are", Order = 1, GroupName = "2. Safety")]
		public SidecarLostAction OnSidecarLost { get; set; }

		[NinjaScriptProperty]
		[Range(1, 10000)]
		[Display(Name = "Max position (contracts)", Description = "Hard cap per instrument, checked here before any entry", Order = 2, GroupName = "2. Safety")]
		public int MaxPositionContracts { get; set; }

		[NinjaScriptProperty]
		[Display(Name = "Lockstep (playback only)", Description = "Wait for the sidecar after every event: deterministic playback, never for live trading", Order = 1, GroupName = "3. Playback")]
		public bool Lockstep { get; set; }

		[NinjaScriptProperty]
		[Range(1, 65536)]
		[Display(Name = "Lockstep window", Description = "Lockstep: ticks that travel together (one TICKS message) before waiting for the sidecar; it always waits at a bar close (1: wait on every message)", Order = 2, GroupName = "3. Playback")]
		public int LockstepWindow { get; set; }
		#endregion
	}
}
