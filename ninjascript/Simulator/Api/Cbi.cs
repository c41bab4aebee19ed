#region Using declarations
using System;
using Nt8Bridge.Simulator;
#endregion

// NinjaTrader.Cbi as the strategy sees it: orders, executions, positions, instruments, the account.
// Only members whose names and signatures appear in the NT8 Help Guide are public (the list with the
// Help Guide pages is ninjascript/Simulator/nt8-api.txt, checked by a test); the simulator's
// plumbing is internal.
namespace NinjaTrader.Cbi
{
	public enum OrderAction { Buy, BuyToCover, Sell, SellShort }

	public enum OrderType { Limit = 0, Market = 1, MIT = 2, StopMarket = 4, StopLimit = 3 }

	public enum OrderState
	{
		Initialized = 3, Submitted = 7, Accepted = 0, TriggerPending = 8, Working = 10, ChangePending = 12, ChangeSubmitted = 6,
		CancelPending = 11, CancelSubmitted = 5, Cancelled = 1, Rejected = 9, PartFilled = 4, Filled = 2, Unknown = 99
	}

	public enum MarketPosition { Flat = 2, Long = 0, Short = 1 }

	public enum TimeInForce { Day, Gtc }

	public enum ErrorCode
	{
		NoError = 0, LogOnFailed = 1, OrderRejected = 3, UnableToCancelOrder = 5, UnableToChangeOrder = 6,
		UnableToSubmitOrder = 7, UserAbort = 8, OrderRejectedByRisk = 9, LoginExpired = 10, Panic = 18
	}

	public enum Currency { UsDollar = 7 }

	public enum AccountItem { BuyingPower = 0, CashValue = 1, RealizedProfitLoss = 18, UnrealizedProfitLoss = 23 }

	public enum PerformanceUnit { Currency, Percent, Pips, Points, Ticks }

	public class MasterInstrument
	{
		public string Name { get; internal set; }
		public double TickSize { get; internal set; }
		public double PointValue { get; internal set; }

		public double RoundToTickSize(double price)
		{
			return Math.Round(price / TickSize, MidpointRounding.AwayFromZero) * TickSize;
		}
	}

	public class Instrument
	{
		public string FullName { get; internal set; }
		public MasterInstrument MasterInstrument { get; internal set; }
		internal int Index;  // position in the playback's instrument list

		public override string ToString() { return FullName; }
	}

	public class Order
	{
		public string Name { get; internal set; }
		public string OrderId { get; internal set; }
		public Instrument Instrument { get; internal set; }
		public OrderAction OrderAction { get; internal set; }
		public OrderType OrderType { get; internal set; }
		public OrderState OrderState { get; internal set; } = OrderState.Initialized;  // NT8 numbers Accepted 0
		public int Quantity { get; internal set; }
		public int Filled { get; internal set; }
		public double AverageFillPrice { get; internal set; }
		public double LimitPrice { get; internal set; }
		public double StopPrice { get; internal set; }
		public string Oco { get; internal set; }
		public DateTime Time { get; internal set; }
		public TimeInForce TimeInForce { get; internal set; }

		public static bool IsTerminalState(OrderState orderState)
		{
			return orderState == OrderState.Cancelled || orderState == OrderState.Filled
				|| orderState == OrderState.Rejected || orderState == OrderState.Unknown;
		}

		internal bool IsBuy { get { return OrderAction == OrderAction.Buy || OrderAction == OrderAction.BuyToCover; } }
		internal int Ordinal;          // submission order, for the report
		internal bool Triggered;       // a stop-limit or MIT whose trigger has traded
		internal long LiveFromEvent;   // first event index at which the exchange may fill it (latency)

		public override string ToString() { return Name + " " + OrderAction + " " + Quantity + " " + OrderType + " " + OrderState; }
	}

	public class Execution
	{
		public string ExecutionId { get; internal set; }
		public string OrderId { get; internal set; }
		public Order Order { get; internal set; }
		public Instrument Instrument { get; internal set; }
		public double Price { get; internal set; }
		public int Quantity { get; internal set; }
		public DateTime Time { get; internal set; }
		public MarketPosition MarketPosition { get; internal set; }
		public double Commission { get; internal set; }
	}

	public class Position
	{
		public Instrument Instrument { get; internal set; }
		public MarketPosition MarketPosition { get; internal set; } = MarketPosition.Flat;  // NT8 numbers Long 0
		public int Quantity { get; internal set; }
		public double AveragePrice { get; internal set; }

		public double GetUnrealizedProfitLoss(PerformanceUnit unit, double price)
		{
			if (MarketPosition == MarketPosition.Flat)
				return 0;
			double points = (price - AveragePrice) * (MarketPosition == MarketPosition.Long ? 1 : -1);
			switch (unit)
			{
				case PerformanceUnit.Points: return points * Quantity;
				case PerformanceUnit.Ticks: return points / Instrument.MasterInstrument.TickSize * Quantity;
				case PerformanceUnit.Percent: return points / AveragePrice;
				default: return points * Instrument.MasterInstrument.PointValue * Quantity;
			}
		}

		internal int Signed { get { return MarketPosition == MarketPosition.Long ? Quantity : MarketPosition == MarketPosition.Short ? -Quantity : 0; } }
	}

	public class Account
	{
		public string Name { get; internal set; }
		internal SimAccount Sim;

		public double Get(AccountItem itemType, Currency currency)
		{
			switch (itemType)
			{
				case AccountItem.CashValue: return Sim.Cash;
				case AccountItem.RealizedProfitLoss: return Sim.Realized;
				case AccountItem.UnrealizedProfitLoss: return Sim.Unrealized();
				default: return Sim.Cash + Sim.Unrealized();
			}
		}
	}
}

namespace NinjaTrader.Core
{
	public static class Globals
	{
		public static readonly GeneralOptions GeneralOptions = new GeneralOptions();

		// NT8's clock: the playback time under the Playback connection, else the computer's, in the display zone.
		public static DateTime Now { get { return NowSource == null ? DateTime.Now : NowSource(); } }

		internal static Func<DateTime> NowSource;
	}

	// NT8 shows and reports times in the zone chosen under Tools > Options > General
	// (Globals.GeneralOptions.TimeZoneInfo); event DateTimes are in that zone, Kind Unspecified.
	public sealed class GeneralOptions
	{
		public TimeZoneInfo TimeZoneInfo { get; internal set; }
		internal GeneralOptions() { TimeZoneInfo = TimeZoneInfo.Utc; }
	}
}
