"""Shared pytest fixtures: where the team's real market data lives, and when to skip without it."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder ../shared/data (real ES, NQ, MES, MYM, SPY files); skips when it is truly absent."""
    if not (SHARED_DATA / "nt8").is_dir():
        pytest.skip(f"real market data not found at {SHARED_DATA} (CI always has it; a user's machine need not)")
    return SHARED_DATA
