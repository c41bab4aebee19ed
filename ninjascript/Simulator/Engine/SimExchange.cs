#region Using declarations
using System;
using System.Collections.Generic;
using NinjaTrader.Cbi;
using NinjaTrader.NinjaScript;
#endregion

namespace Nt8Bridge.Simulator
{
	// How the simulated exchange fills orders. Defaults match the Python engine's fill model
	// (bridge/nt8/fillmodel.py) so that both engines can be compared on the same data.
	public sealed class FillModel
	{
		public int SlippageTicks = 1;                 // market, stop and MIT fills: ticks worse than the reference price
		public double CommissionPerContract = 2.09;   // per contract per side
		public bool FillLimitOnTouch;                 // NT8's IsFillLimitOnTouch: limits fill on touch, not only through
		public bool PartialFillsFromVolume = true;    // a resting limit fills at most the volume that traded at its price
		public int OrderLatencyMs;                    // free-running mode: submit/change/cancel take effect this much later (event time)
	}

	// Misbehaviour of a live broker, injected on purpose so that tests prove the strategy survives it.
	// Deterministic for a given seed.
	public sealed class Faults
	{
		public int Seed = 1;
		public double RejectRate;             // submissions rejected outright
		public double DropOrderUpdateRate;    // non-final order updates never delivered
		public double ExecutionFirstRate;     // OnExecutionUpdate delivered before the OnOrderUpdate of that fill
		public bool Any { get { return RejectRate > 0 || DropOrderUpdateRate > 0 || ExecutionFirstRate > 0; } }
	}

	// The order state machine and fill model of the simulated Playback101 account. With no latency
	// it is synchronous like Playback101: order events fire inside SubmitOrderUnmanaged, before it
	// returns, and an execution can arrive in the middle of a strategy callback.
	internal sealed class SimExchange
	{
		private readonly FillModel model;
		private readonly Faults faults;
		private readonly Random faultRandom;
		private readonly Instrument[] instruments;
		private readonly double[] last, bid, ask;
		private readonly Position[] positions;
		private readonly List<Order> working = new List<Order>();
		private readonly HashSet<string> ocoUsed = new HashSet<string>();
		private readonly List<Pending> pending = new List<Pending>();  // latency: requests not yet effective
		private readonly Func<long, DateTime> display;
		private int nextOrder, nextExecution;
		internal readonly SimAccount Account;
		internal StrategyBase Owner;
		internal long Now;          // event time, DateTime.Ticks UTC
		internal long EventIndex;   // index of the event being processed
		internal readonly PlaybackReport Report;

		private struct Pending
		{
			public long Due;
			public Order Order;
			public char Kind;   // 'S' submit, 'C' change, 'X' cancel
			public int Quantity;
			public double Limit, Stop;
		}

		internal SimExchange(Instrument[] instruments, FillModel model, Faults faults, SimAccount account, Func<long, DateTime> display, PlaybackReport report)
		{
			this.instruments = instruments;
			this.model = model;
			this.faults = faults;
			this.display = display;
			Account = account;
			Report = report;
			faultRandom = new Random(faults.Seed);
			int n = instruments.Length;
			last = new double[n]; bid = new double[n]; ask = new double[n];
			positions = new Position[n];
			for (int i = 0; i < n; i++)
			{
				last[i] = bid[i] = ask[i] = double.NaN;
				positions[i] = new Position { Instrument = instruments[i], MarketPosition = MarketPosition.Flat };
			}
			account.UnrealizedSource = Unrealized;
		}

		internal Position PositionOf(int instrument) { return positions[instrument]; }

		internal bool HasWorkingOrders { get { return working.Count > 0 || pending.Count > 0; } }

		private double Unrealized()
		{
			double sum = 0;
			for (int i = 0; i < positions.Length; i++)
				if (!double.IsNaN(last[i]))
					sum += positions[i].GetUnrealizedProfitLoss(PerformanceUnit.Currency, last[i]);
			return sum;
		}

		// ------------------------------------------------------------------ requests from the strategy

		internal Order Submit(int instrument, OrderAction action, OrderType type, int quantity, double limit, double stop, string oco, string name)
		{
			Order o = new Order
			{
				Name = name ?? "", OrderId = "SIM-" + (++nextOrder), Instrument = instruments[instrument], OrderAction = action,
				OrderType = type, Quantity = quantity, LimitPrice = limit, StopPrice = stop, Oco = oco ?? "", Time = display(Now),
				OrderState = OrderState.Initialized, Ordinal = nextOrder, TimeInForce = Owner.TimeInForce,
			};
			Report.OnSubmit(o, EventIndex);
			string why = Refusal(o);
			if (why == null && faults.RejectRate > 0 && faultRandom.NextDouble() < faults.RejectRate)
				why = "rejected by the broker (injected fault)";
			if (o.Oco.Length > 0)
				ocoUsed.Add(o.Oco);
			if (why != null)
			{
				SetState(o, OrderState.Rejected, ErrorCode.OrderRejected, why);
				return o;
			}
			SetState(o, OrderState.Submitted, ErrorCode.NoError, "");
			if (model.OrderLatencyMs > 0)
				pending.Add(new Pending { Due = Now + model.OrderLatencyMs * TimeSpan.TicksPerMillisecond, Order = o, Kind = 'S' });
			else
				Activate(o);
			return o;
		}

		internal void Change(Order o, int quantity, double limit, double stop)
		{
			if (Order.IsTerminalState(o.OrderState) || o.OrderState == OrderState.CancelPending || o.OrderState == OrderState.CancelSubmitted)
			{
				// What live brokers answer to a change racing a cancel or a fill; the order itself is unchanged.
				Report.ChangesRefused++;
				Notify(o, ErrorCode.UnableToChangeOrder, "cannot change an order that is " + o.OrderState);
				return;
			}
			if (quantity <= o.Filled || quantity <= 0)
			{
				Report.ChangesRefused++;
				Notify(o, ErrorCode.UnableToChangeOrder, "quantity " + quantity + " is not above the " + o.Filled + " already filled");
				return;
			}
			SetState(o, OrderState.ChangePending, ErrorCode.NoError, "");
			if (model.OrderLatencyMs > 0)
				pending.Add(new Pending { Due = Now + model.OrderLatencyMs * TimeSpan.TicksPerMillisecond, Order = o, Kind = 'C', Quantity = quantity, Limit = limit, Stop = stop });
			else
				ApplyChange(o, quantity, limit, stop);
		}

		internal void Cancel(Order o)
		{
			if (Order.IsTerminalState(o.OrderState) || o.OrderState == OrderState.CancelPending || o.OrderState == OrderState.CancelSubmitted)
				return;  // NT8 ignores a cancel of an order that is done or already being cancelled
			SetState(o, OrderState.CancelPending, ErrorCode.NoError, "");
			if (model.OrderLatencyMs > 0)
				pending.Add(new Pending { Due = Now + model.OrderLatencyMs * TimeSpan.TicksPerMillisecond, Order = o, Kind = 'X' });
			else
				Finish(o, OrderState.Cancelled, "");
		}

		private string Refusal(Order o)
		{
			if (o.Quantity <= 0)
				return "quantity must be positive";
			bool needsLimit = o.OrderType == OrderType.Limit || o.OrderType == OrderType.StopLimit;
			bool needsStop = o.OrderType == OrderType.StopMarket || o.OrderType == OrderType.StopLimit || o.OrderType == OrderType.MIT;
			if (needsLimit && !(o.LimitPrice > 0) || needsStop && !(o.StopPrice > 0))
				return "a " + o.OrderType + " order needs a positive price";
			if (o.Oco.Length > 0 && ocoUsed.Contains(o.Oco) && !HasLiveOco(o.Oco))
				return "OCO id '" + o.Oco + "' was used before; an OCO id can never be reused";
			return StopSideRefusal(o, o.StopPrice);
		}

		// Brokers refuse a stop that is already through the market ("buy stop below the market").
		private string StopSideRefusal(Order o, double stopPrice)
		{
			if (o.OrderType != OrderType.StopMarket && o.OrderType != OrderType.StopLimit)
				return null;
			double reference = last[o.Instrument.Index];
			if (double.IsNaN(reference))
				return null;
			if (o.IsBuy && stopPrice <= reference)
				return "buy stop " + stopPrice + " is not above the last price " + reference;
			if (!o.IsBuy && stopPrice >= reference)
				return "sell stop " + stopPrice + " is not below the last price " + reference;
			return null;
		}

		private bool HasLiveOco(string oco)
		{
			foreach (Order w in working)
				if (w.Oco == oco)
					return true;
			return false;
		}

		private void Activate(Order o)
		{
			if (o.OrderState != OrderState.Submitted)
				return;
			string why = StopSideRefusal(o, o.StopPrice);
			if (why != null)
			{
				SetState(o, OrderState.Rejected, ErrorCode.OrderRejected, why);
				return;
			}
			working.Add(o);
			SetState(o, OrderState.Accepted, ErrorCode.NoError, "");
			SetState(o, OrderState.Working, ErrorCode.NoError, "");
			TryFillOnArrival(o);
		}

		private void ApplyChange(Order o, int quantity, double limit, double stop)
		{
			if (o.OrderState != OrderState.ChangePending)
				return;  // filled or cancelled meanwhile
			string why = StopSideRefusal(o, stop);
			if (why != null)
			{
				Report.ChangesRefused++;
				o.OrderState = o.Filled > 0 ? OrderState.PartFilled : OrderState.Working;
				Notify(o, ErrorCode.UnableToChangeOrder, why);
				return;
			}
			o.Quantity = quantity;
			o.LimitPrice = limit;
			o.StopPrice = stop;
			SetState(o, o.Filled > 0 ? OrderState.PartFilled : OrderState.Working, ErrorCode.NoError, "");
			TryFillOnArrival(o);
		}

		// A market order, or a limit through the current quote, fills as soon as it is working.
		private void TryFillOnArrival(Order o)
		{
			int i = o.Instrument.Index;
			double reference = o.IsBuy ? ask[i] : bid[i];
			if (double.IsNaN(reference))
				return;  // nothing known yet: it waits for the first trade
			double tick = o.Instrument.MasterInstrument.TickSize;
			int remaining = o.Quantity - o.Filled;
			switch (o.OrderType)
			{
				case OrderType.Market:
					Fill(o, remaining, Worse(o, reference, tick));
					break;
				case OrderType.Limit:
					if (o.IsBuy ? reference <= o.LimitPrice : reference >= o.LimitPrice)
						Fill(o, remaining, reference);  // marketable limit: at the quote, which is at the limit or better
					break;
			}
		}

		private double Worse(Order o, double price, double tick)
		{
			return price + (o.IsBuy ? 1 : -1) * model.SlippageTicks * tick;
		}

		// ------------------------------------------------------------------ market data

		internal void Advance(long now)
		{
			Now = now;
			if (pending.Count == 0)
				return;
			// requests whose latency has elapsed, in the order they were made
			List<Pending> due = null;
			for (int k = 0; k < pending.Count; k++)
				if (pending[k].Due <= now)
					(due ?? (due = new List<Pending>())).Add(pending[k]);
			if (due == null)
				return;
			pending.RemoveAll(p => p.Due <= now);
			foreach (Pending p in due)
			{
				if (p.Kind == 'S') Activate(p.Order);
				else if (p.Kind == 'C') ApplyChange(p.Order, p.Quantity, p.Limit, p.Stop);
				else if (p.Order.OrderState == OrderState.CancelPending) Finish(p.Order, OrderState.Cancelled, "");
			}
		}

		internal void OnQuote(int instrument, double bidPrice, double askPrice)
		{
			bid[instrument] = bidPrice;
			ask[instrument] = askPrice;
		}

		// A trade at price for volume: resting orders of that instrument fill in the order they were submitted.
		internal void OnTrade(int instrument, double price, long volume)
		{
			last[instrument] = price;
			if (working.Count == 0)
				return;
			long available = model.PartialFillsFromVolume ? Math.Max(1, volume) : long.MaxValue;
			Order[] snapshot = working.ToArray();
			double tick = instruments[instrument].MasterInstrument.TickSize;
			foreach (Order o in snapshot)
			{
				if (o.Instrument.Index != instrument || !IsLive(o))
					continue;
				int remaining = o.Quantity - o.Filled;
				if (remaining <= 0)
					continue;
				bool buy = o.IsBuy;
				switch (o.OrderType)
				{
					case OrderType.Market:
						Fill(o, remaining, Worse(o, Reference(o, price), tick));
						break;
					case OrderType.StopMarket:
						if (buy ? price >= o.StopPrice : price <= o.StopPrice)
							Fill(o, remaining, Worse(o, buy ? Math.Max(o.StopPrice, price) : Math.Min(o.StopPrice, price), tick));
						break;
					case OrderType.MIT:
						if (buy ? price <= o.StopPrice : price >= o.StopPrice)
							Fill(o, remaining, Worse(o, price, tick));
						break;
					case OrderType.StopLimit:
						if (!o.Triggered && (buy ? price >= o.StopPrice : price <= o.StopPrice))
							o.Triggered = true;
						if (o.Triggered && LimitReached(buy, price, o.LimitPrice))
							available -= FillLimit(o, remaining, available);
						break;
					case OrderType.Limit:
						if (LimitReached(buy, price, o.LimitPrice))
							available -= FillLimit(o, remaining, available);
						break;
				}
				if (available <= 0)
					available = 0;
			}
		}

		private bool LimitReached(bool buy, double price, double limit)
		{
			if (model.FillLimitOnTouch)
				return buy ? price <= limit : price >= limit;
			return buy ? price < limit : price > limit;
		}

		private int FillLimit(Order o, int remaining, long available)
		{
			int qty = (int)Math.Min(remaining, available);
			if (qty <= 0)
				return 0;
			Fill(o, qty, o.LimitPrice);
			return qty;
		}

		private double Reference(Order o, double trade)
		{
			int i = o.Instrument.Index;
			double q = o.IsBuy ? ask[i] : bid[i];
			return double.IsNaN(q) ? trade : q;
		}

		private static bool IsLive(Order o)
		{
			return o.OrderState == OrderState.Working || o.OrderState == OrderState.Accepted || o.OrderState == OrderState.PartFilled;
		}

		// ------------------------------------------------------------------ fills and events

		private void Fill(Order o, int quantity, double price)
		{
			double commission = quantity * model.CommissionPerContract;
			o.AverageFillPrice = (o.AverageFillPrice * o.Filled + price * quantity) / (o.Filled + quantity);
			o.Filled += quantity;
			o.Time = display(Now);
			bool complete = o.Filled >= o.Quantity;
			if (complete)
				working.Remove(o);
			Position p = positions[o.Instrument.Index];
			Book(p, o.IsBuy ? quantity : -quantity, price, commission);
			Execution e = new Execution
			{
				ExecutionId = "SIM-E-" + (++nextExecution), OrderId = o.OrderId, Order = o, Instrument = o.Instrument, Price = price,
				Quantity = quantity, Time = o.Time, MarketPosition = o.IsBuy ? MarketPosition.Long : MarketPosition.Short, Commission = commission,
			};
			Report.OnFill(o, e, EventIndex, Now, p.Signed);
			bool executionFirst = faults.ExecutionFirstRate > 0 && faultRandom.NextDouble() < faults.ExecutionFirstRate;
			if (executionFirst)
			{
				Report.ExecutionsFirst++;
				Owner.RaiseExecution(e);
			}
			SetState(o, complete ? OrderState.Filled : OrderState.PartFilled, ErrorCode.NoError, "");
			if (!executionFirst)
				Owner.RaiseExecution(e);
			Owner.RaisePosition(p);
			Owner.RaiseAccountItem(AccountItem.CashValue, Account.Cash);
			Owner.RaiseAccountItem(AccountItem.RealizedProfitLoss, Account.Realized);
			if (o.Oco.Length > 0)
				ResolveOco(o, quantity, complete);
		}

		// One member of an OCO group filled: the others are cancelled when it is complete, and
		// reduced by the filled quantity while it is partial (what brokers with OCO reduce do).
		private void ResolveOco(Order filled, int quantity, bool complete)
		{
			foreach (Order other in working.ToArray())
			{
				if (other == filled || other.Oco != filled.Oco || !IsLive(other))
					continue;
				int reduced = other.Quantity - quantity;
				if (complete || reduced <= other.Filled)
				{
					other.OrderState = OrderState.CancelPending;
					Notify(other, ErrorCode.NoError, "");
					Finish(other, OrderState.Cancelled, "OCO");
				}
				else
				{
					other.Quantity = reduced;
					Notify(other, ErrorCode.NoError, "OCO reduce");
				}
			}
		}

		private void Book(Position p, int signedQty, double price, double commission)
		{
			double pv = p.Instrument.MasterInstrument.PointValue;
			int before = p.Signed;
			int after = before + signedQty;
			Account.Commission += commission;
			if (before == 0 || Math.Sign(before) == Math.Sign(signedQty))
			{
				p.AveragePrice = (p.AveragePrice * Math.Abs(before) + price * Math.Abs(signedQty)) / Math.Abs(after);
			}
			else
			{
				int closed = Math.Min(Math.Abs(before), Math.Abs(signedQty));
				Account.Realized += closed * (price - p.AveragePrice) * Math.Sign(before) * pv;
				Report.AddRealized(p.Instrument.Index, closed * (price - p.AveragePrice) * Math.Sign(before) * pv);
				if (Math.Sign(after) != Math.Sign(before) && after != 0)
					p.AveragePrice = price;  // reversed through flat: the rest opens at this price
			}
			Report.AddCommission(p.Instrument.Index, commission);
			p.Quantity = Math.Abs(after);
			p.MarketPosition = after > 0 ? MarketPosition.Long : after < 0 ? MarketPosition.Short : MarketPosition.Flat;
			if (after == 0)
				p.AveragePrice = 0;
		}

		private void Finish(Order o, OrderState state, string comment)
		{
			working.Remove(o);
			SetState(o, state, ErrorCode.NoError, comment);
		}

		private void SetState(Order o, OrderState state, ErrorCode error, string comment)
		{
			o.OrderState = state;
			if (state == OrderState.Rejected)
				Report.OrdersRejected++;
			Report.OnState(o);
			Notify(o, error, comment);
		}

		private void Notify(Order o, ErrorCode error, string comment)
		{
			bool final = Order.IsTerminalState(o.OrderState) || o.OrderState == OrderState.PartFilled;
			if (!final && faults.DropOrderUpdateRate > 0 && faultRandom.NextDouble() < faults.DropOrderUpdateRate)
			{
				Report.OrderUpdatesDropped++;
				return;
			}
			Owner.RaiseOrderUpdate(o, error, comment);
		}
	}
}
