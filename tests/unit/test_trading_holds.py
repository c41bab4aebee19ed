"""Holds the sidecar puts on its trading switch by itself (bridge/risk/switch.py): what each lets through."""

from __future__ import annotations

import pytest

from bridge.risk.switch import TradingState, TradingSwitch, reduces


@pytest.mark.parametrize(("position", "working", "side", "quantity", "expected"), [
    (0, 0, +1, 1, False),  # flat: any entry opens a position
    (3, 0, -1, 1, True),  # long 3, sell 1
    (3, 0, -1, 3, True),  # sell all of it
    (3, 0, -1, 4, False),  # beyond flat: a short is opened
    (3, 0, +1, 1, False),  # adds to it
    (-2, 0, +1, 2, True),
    (3, -2, -1, 1, True),  # long 3 with a working sell of 2: one more still reduces
    (3, -2, -1, 2, False),  # ... two more would cross zero
    (0, 2, -1, 1, True),  # a working buy counts as exposure
])
def test_what_reduces_a_position(position: int, working: int, side: int, quantity: int, expected: bool) -> None:
    assert reduces(position, working, side, quantity) is expected


def test_the_most_restrictive_hold_is_in_force_and_each_lifts_on_its_own() -> None:
    switch = TradingSwitch()
    assert switch.hold_in_force is None
    switch.hold("storage", TradingState.REDUCING, "database away", 1)
    hold = switch.hold_in_force
    assert hold is not None and hold.allows(3, 0, -1, 1) and not hold.allows(0, 0, 1, 1)
    assert hold.denial == "RISK_STATE_REDUCING (storage: database away)"
    switch.hold("audit", TradingState.HALTED, "journal disk full", 2)
    hold = switch.hold_in_force
    assert hold is not None and hold.source == "audit" and not hold.allows(3, 0, -1, 1)
    assert switch.release("audit") is not None and switch.hold_in_force.source == "storage"  # type: ignore[union-attr]
    assert switch.release("storage") is not None and switch.release("storage") is None
    assert switch.hold_in_force is None and not switch.halted  # a hold is not the kill switch
    with pytest.raises(ValueError):
        switch.hold("x", TradingState.ACTIVE, "no", 3)
