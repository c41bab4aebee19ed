#region Using declarations
using System;
using System.Collections.Generic;
using NinjaTrader.Cbi;
using NinjaTrader.Data;
using Nt8Bridge.Simulator;
#endregion

// NinjaTrader.NinjaScript as a strategy sees it: the lifecycle, the event methods it overrides, and
// the order methods of the unmanaged approach. The playback engine (Nt8Bridge.Simulator) drives
// it through internal members, the way NT8 drives a strategy enabled on a chart.
namespace NinjaTrader.NinjaScript
{
	public enum State { SetDefaults = 1, Configure = 2, Active = 3, DataLoaded = 4, Historical = 5, Transition = 6, Realtime = 7, Terminated = 8, Finalized = 9 }

	public enum Calculate { OnBarClose, OnEachTick, OnPriceChange }

	public enum StartBehavior { AdoptAccountPosition, ImmediatelySubmit, ImmediatelySubmitSynchronizeAccount, WaitUntilFlat, WaitUntilFlatSynchronizeAccount }

	public enum RealtimeErrorHandling { IgnoreAllErrors, StopCancelClose, StopCancelCloseIgnoreRejects }

	// Marks a property as a parameter of the script (shown in the UI, part of its identity).
	[AttributeUsage(AttributeTargets.Property)]
	public sealed class NinjaScriptPropertyAttribute : Attribute
	{
	}

	public abstract class NinjaScriptBase
	{
		public string Name { get; set; }
		public string Description { get; set; }
		public Calculate Calculate { get; set; }
		public State State { get; internal set; }
		public int BarsInProgress { get; internal set; }
		public int CurrentBar { get { return CurrentBars[BarsInProgress]; } }
		public int[] CurrentBars { get; internal set; }
		public Bars[] BarsArray { get; internal set; }
		public BarsPeriod BarsPeriod { get { return BarsArray != null && BarsArray.Length > 0 ? BarsArray[0].BarsPeriod : Host.PrimaryPeriod; } }
		public Instrument Instrument { get { return BarsArray != null && BarsArray.Length > 0 ? BarsArray[0].Instrument : Host.PrimaryInstrument; } }
		public bool IsFirstTickOfBar { get; internal set; }

		internal ISimHost Host;

		protected NinjaScriptBase()
		{
			CurrentBars = new int[0];
		}

		public void Print(object value)
		{
			Host.Print(value == null ? "" : value.ToString());
		}

		// Work from another thread (a socket reader, a timer) enters the script here, on its own thread.
		public void TriggerCustomEvent(Action<object> customEvent, object state)
		{
			Host.TriggerCustomEvent(customEvent, state);
		}

		public void AddDataSeries(string instrumentName, BarsPeriodType periodType, int period)
		{
			if (State != State.Configure)
				throw new InvalidOperationException("AddDataSeries can only be called in State.Configure (NT8 ignores it elsewhere)");
			Host.AddDataSeries(instrumentName, new BarsPeriod { BarsPeriodType = periodType, Value = period });
		}

		protected virtual void OnStateChange() { }
		protected virtual void OnBarUpdate() { }
		protected virtual void OnMarketData(MarketDataEventArgs marketDataUpdate) { }

		internal void RaiseStateChange(State state) { State = state; OnStateChange(); }
		internal void RaiseBarUpdate() { OnBarUpdate(); }
		internal void RaiseMarketData(MarketDataEventArgs e) { OnMarketData(e); }
	}

	public abstract class StrategyBase : NinjaScriptBase
	{
		public bool IsUnmanaged { get; set; }
		public bool IsFillLimitOnTouch { get; set; }
		public int Slippage { get; set; }
		public int BarsRequiredToTrade { get; set; }
		public bool IgnoreOverfill { get; set; }
		public RealtimeErrorHandling RealtimeErrorHandling { get; set; }
		public StartBehavior StartBehavior { get; set; }
		public TimeInForce TimeInForce { get; set; }
		public Account Account { get; internal set; }
		public Position Position { get { return Positions[0]; } }
		public Position[] Positions { get; internal set; }

		protected StrategyBase()
		{
			BarsRequiredToTrade = 20;
			RealtimeErrorHandling = RealtimeErrorHandling.StopCancelClose;
			TimeInForce = TimeInForce.Gtc;
		}

		public Order SubmitOrderUnmanaged(int selectedBarsInProgress, OrderAction orderAction, OrderType orderType, int quantity,
			double limitPrice, double stopPrice, string oco, string signalName)
		{
			return Host.Submit(this, selectedBarsInProgress, orderAction, orderType, quantity, limitPrice, stopPrice, oco, signalName);
		}

		public void ChangeOrder(Order order, int quantity, double limitPrice, double stopPrice)
		{
			Host.Change(this, order, quantity, limitPrice, stopPrice);
		}

		public void CancelOrder(Order order)
		{
			Host.Cancel(this, order);
		}

		protected virtual void OnOrderUpdate(Order order, double limitPrice, double stopPrice, int quantity, int filled,
			double averageFillPrice, OrderState orderState, DateTime time, ErrorCode error, string comment) { }

		protected virtual void OnExecutionUpdate(Execution execution, string executionId, double price, int quantity,
			MarketPosition marketPosition, string orderId, DateTime time) { }

		protected virtual void OnPositionUpdate(Position position, double averagePrice, int quantity, MarketPosition marketPosition) { }

		protected virtual void OnAccountItemUpdate(Account account, AccountItem accountItem, double value) { }

		internal void RaiseOrderUpdate(Order o, ErrorCode error, string comment)
		{
			OnOrderUpdate(o, o.LimitPrice, o.StopPrice, o.Quantity, o.Filled, o.AverageFillPrice, o.OrderState, o.Time, error, comment);
		}

		internal void RaiseExecution(Execution e)
		{
			OnExecutionUpdate(e, e.ExecutionId, e.Price, e.Quantity, e.MarketPosition, e.OrderId, e.Time);
		}

		internal void RaisePosition(Position p)
		{
			OnPositionUpdate(p, p.AveragePrice, p.Quantity, p.MarketPosition);
		}

		internal void RaiseAccountItem(AccountItem item, double value)
		{
			OnAccountItemUpdate(Account, item, value);
		}
	}
}

namespace NinjaTrader.NinjaScript.Strategies
{
	public abstract class Strategy : NinjaTrader.NinjaScript.StrategyBase
	{
	}
}

namespace NinjaTrader.NinjaScript.DrawingTools
{
	public enum TextPosition { BottomLeft, BottomRight, Center, TopLeft, TopRight }

	public class TextFixed
	{
		public string Tag { get; internal set; }
		internal string Text;
		internal TextPosition Position;
	}

	public static class Draw
	{
		public static TextFixed TextFixed(NinjaScriptBase owner, string tag, string text, TextPosition textPosition)
		{
			return owner.Host.DrawTextFixed(tag, text, textPosition);
		}
	}
}
