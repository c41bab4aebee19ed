#region Using declarations
using System;
using NinjaTrader.Cbi;
using NinjaTrader.Data;
using NinjaTrader.NinjaScript;
using NinjaTrader.NinjaScript.DrawingTools;
#endregion

namespace Nt8Bridge.Simulator
{
	// What the NT8 API surface asks of the playback engine: everything a script does that NT8
	// itself would carry out (printing, orders, drawing, cross-thread events).
	internal interface ISimHost
	{
		BarsPeriod PrimaryPeriod { get; }
		Instrument PrimaryInstrument { get; }
		void Print(string text);
		void TriggerCustomEvent(Action<object> customEvent, object state);
		void AddDataSeries(string instrumentName, BarsPeriod period);
		Order Submit(StrategyBase owner, int barsInProgress, OrderAction action, OrderType type, int quantity,
			double limitPrice, double stopPrice, string oco, string name);
		void Change(StrategyBase owner, Order order, int quantity, double limitPrice, double stopPrice);
		void Cancel(StrategyBase owner, Order order);
		TextFixed DrawTextFixed(string tag, string text, TextPosition position);
	}

	// Cash and P&L of the simulated account (Account.Get reads it).
	internal sealed class SimAccount
	{
		public double StartingCash = 100000;
		public double Realized;
		public double Commission;
		public Func<double> UnrealizedSource;
		public double Cash { get { return StartingCash + Realized - Commission; } }
		public double Unrealized() { return UnrealizedSource == null ? 0 : UnrealizedSource(); }
	}
}
