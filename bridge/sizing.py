"""Sizing stage: how many contracts a Signal trades. Fixed for now; Kelly sizing (issue 5)
replaces it behind ``size``."""

from __future__ import annotations

from dataclasses import dataclass

from bridge.config import SizingConfig
from strategies.base import Signal


@dataclass(frozen=True, slots=True)
class SizingDecision:
    quantity: int
    rationale: str


class FixedQuantitySizer:
    def __init__(self, config: SizingConfig) -> None:
        self.config = config

    def size(self, signal: Signal) -> SizingDecision:
        q = self.config.quantity
        return SizingDecision(q, f"fixed quantity {q} (no sizing model configured)")
