#region Using declarations
using System;
using NinjaTrader.Cbi;
using NinjaTrader.NinjaScript;
#endregion

// A sample for tests/integration/test_nt8_api.py that compiles against the simulator but uses what
// the Help Guide does not show, so the checker must fail it: an Order built by hand (the implicit
// constructor of the simulator's class), State.Finalized (an undocumented enum member), and an
// OnOrderUpdate override whose last parameter is not named as in the Help Guide's syntax.
namespace NinjaTrader.NinjaScript.Strategies
{
	public class Nt8ApiBadSample : Strategy
	{
		private Order placeholder = new Order();

		protected override void OnStateChange()
		{
			if (State == State.Finalized)
				placeholder = null;
		}

		protected override void OnOrderUpdate(Order order, double limitPrice, double stopPrice, int quantity, int filled,
			double averageFillPrice, OrderState orderState, DateTime time, ErrorCode error, string nativeError)
		{
			if (placeholder != null && order.OrderState == OrderState.Rejected)
				Print(nativeError);
		}
	}
}
