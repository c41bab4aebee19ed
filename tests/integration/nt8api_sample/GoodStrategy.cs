#region Using declarations
using System;
using System.ComponentModel;
using System.ComponentModel.DataAnnotations;
using NinjaTrader.Cbi;
using NinjaTrader.Data;
using NinjaTrader.NinjaScript;
using NinjaTrader.NinjaScript.DrawingTools;
#endregion

// A sample for tests/integration/test_nt8_api.py: every NT8 member it touches is on
// ninjascript/Simulator/nt8-api.txt, verified in the Help Guide (or allowed there), so the checker passes it.
namespace NinjaTrader.NinjaScript.Strategies
{
	public class Nt8ApiGoodSample : Strategy
	{
		private Order entry;
		private TimeZoneInfo displayZone;

		[NinjaScriptProperty]
		[Range(1, int.MaxValue)]
		[Display(Name = "Quantity", GroupName = "Parameters", Order = 0)]
		public int Quantity { get; set; }

		protected override void OnStateChange()
		{
			if (State == State.SetDefaults)
			{
				Name = "Nt8ApiGoodSample";
				Calculate = Calculate.OnEachTick;
				IsUnmanaged = true;
				IsFillLimitOnTouch = false;
				TimeInForce = TimeInForce.Gtc;
				Quantity = 1;
			}
			else if (State == State.Configure)
				AddDataSeries("ES 12-23", BarsPeriodType.Minute, 1);
			else if (State == State.DataLoaded)
				displayZone = NinjaTrader.Core.Globals.GeneralOptions.TimeZoneInfo;
		}

		protected override void OnBarUpdate()
		{
			if (BarsInProgress != 0 || CurrentBars[0] < 1 || entry != null)
				return;
			double close = BarsArray[0].GetClose(CurrentBar);
			double price = Instrument.MasterInstrument.RoundToTickSize(close - 2 * Instrument.MasterInstrument.TickSize);
			entry = SubmitOrderUnmanaged(0, OrderAction.Buy, OrderType.Limit, Quantity, price, 0, "", "entry");
			Draw.TextFixed(this, "status", "entry at " + price, TextPosition.TopRight);
		}

		protected override void OnOrderUpdate(Order order, double limitPrice, double stopPrice, int quantity, int filled,
			double averageFillPrice, OrderState orderState, DateTime time, ErrorCode error, string comment)
		{
			if (order == entry && Order.IsTerminalState(orderState) && order.Filled == 0)
				entry = null;
			if (error != ErrorCode.NoError)
				Print(order.Name + " " + error + " " + comment + " at " + TimeZoneInfo.ConvertTimeToUtc(time, displayZone));
		}

		protected override void OnExecutionUpdate(Execution execution, string executionId, double price, int quantity,
			MarketPosition marketPosition, string orderId, DateTime time)
		{
			TriggerCustomEvent(o => Print("filled " + o), execution.Quantity);
		}
	}
}
