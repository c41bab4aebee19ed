"""Compiling the NinjaScript side with Mono's mcs, as NT8 8.1 would accept it (C# 7.2, .NET 4.8 API).

Used by the tests now and by ``nt8bridge ninjascript build`` with the strategy and simulator of
issue 3. Only what ships to NT8 is compiled here: sources under ``ninjascript/AddOns`` (and,
later, ``ninjascript/Strategies``), with no third-party reference.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NINJASCRIPT = REPO / "ninjascript"
# what ships to NT8 so far: the protocol codec and the ZMTP 3.1 DEALER
ADDON_SOURCES = (NINJASCRIPT / "AddOns" / "Nt8Bridge" / "Protocol.cs", NINJASCRIPT / "AddOns" / "Nt8Bridge" / "Zmtp.cs")


class BuildError(RuntimeError):
    """mcs is missing or the C# does not compile; the message carries the compiler's output."""


def find_mcs() -> str:
    mcs = shutil.which("mcs")
    if mcs is None:
        raise BuildError("Mono's C# compiler (mcs) is not installed: apt-get install mono-devel")
    return mcs


def compile_library(sources: tuple[Path, ...], out: Path) -> Path:
    """Compile ``sources`` into the library ``out`` with C# 7.2 against the .NET Framework 4.8 API."""
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [find_mcs(), "-langversion:7.2", "-sdk:4.8", "-target:library", "-warnaserror+", "-nologo",
           "-optimize+", f"-out:{out}", *map(str, sources)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"mcs failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return out
