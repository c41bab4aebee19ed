"""Building and exporting the NinjaScript side with Mono's mcs, as NT8 8.1 would accept it.

Two assemblies are built (``nt8bridge ninjascript build``), both C# 7.2 against the .NET Framework
4.8 API with warnings as errors:

- ``Nt8Bridge.Simulator.dll``: the NT8 API surface and the playback engine (``ninjascript/Simulator``),
  for tests and playback only, never shipped to NT8;
- ``Nt8Bridge.NinjaScript.dll``: what ships to NT8 (``ninjascript/AddOns`` and
  ``ninjascript/Strategies``), compiled against the simulator exactly as NT8 compiles it against
  its own assemblies.

``nt8bridge ninjascript export`` writes the NT8 import zip of the shipped sources only.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NINJASCRIPT = REPO / "ninjascript"
# the NT8-independent helpers (codec, ZMTP, link): they compile and run without any NinjaTrader type
ADDON_SOURCES = tuple(NINJASCRIPT / "AddOns" / "Nt8Bridge" / name for name in ("Protocol.cs", "Zmtp.cs", "Link.cs"))
SIMULATOR_DLL = "Nt8Bridge.Simulator.dll"
NINJASCRIPT_DLL = "Nt8Bridge.NinjaScript.dll"
# [Display] and [Range] on strategy parameters; NT8 references it for every script
FRAMEWORK_REFERENCES = ("System.ComponentModel.DataAnnotations.dll",)
NT8_VERSION = "8.1.2.1"  # the NT8 release whose compiler the sources are kept within (C# 7.2 subset)


class BuildError(RuntimeError):
    """mcs is missing or the C# does not compile; the message carries the compiler's output."""


def find_mcs() -> str:
    mcs = shutil.which("mcs")
    if mcs is None:
        raise BuildError("Mono's C# compiler (mcs) is not installed: apt-get install mono-devel "
                         "(on Windows, build inside NT8: import the zip of `nt8bridge ninjascript export`)")
    return mcs


def compile_library(sources: tuple[Path, ...] | list[Path], out: Path, references: tuple[str, ...] | list[str] = ()) -> Path:
    """Compile ``sources`` into the library ``out`` with C# 7.2 against the .NET Framework 4.8 API."""
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [find_mcs(), "-langversion:7.2", "-sdk:4.8", "-target:library", "-warnaserror+", "-nologo",
           "-optimize+", "-debug-", f"-out:{out}", *(f"-r:{r}" for r in references), *map(str, sources)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"mcs failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return out


def simulator_sources() -> list[Path]:
    return sorted((NINJASCRIPT / "Simulator").rglob("*.cs"))


def shipped_sources() -> list[Path]:
    """What goes to NT8: the add-on helpers and the strategy, never the simulator."""
    return sorted((NINJASCRIPT / "AddOns").rglob("*.cs")) + sorted((NINJASCRIPT / "Strategies").rglob("*.cs"))


@dataclass(frozen=True)
class Build:
    simulator: Path
    ninjascript: Path


def default_build_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "nt8bridge" / "build"


def _fingerprint(sources: list[Path]) -> str:
    h = hashlib.sha256()
    for path in sources:
        h.update(str(path.relative_to(NINJASCRIPT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def build(out_dir: Path | None = None, *, force: bool = False) -> Build:
    """Compile both assemblies into ``out_dir/<fingerprint of the sources>``; a build of the same sources is reused."""
    sim_src, ship_src = simulator_sources(), shipped_sources()
    if not ship_src or not sim_src:
        raise BuildError(f"no C# sources under {NINJASCRIPT}")
    target = (out_dir or default_build_dir()) / _fingerprint(sim_src + ship_src)
    result = Build(target / SIMULATOR_DLL, target / NINJASCRIPT_DLL)
    if not force and result.simulator.exists() and result.ninjascript.exists():
        return result
    staging = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    compile_library(sim_src, staging / SIMULATOR_DLL)
    compile_library(ship_src, staging / NINJASCRIPT_DLL, (str(staging / SIMULATOR_DLL), *FRAMEWORK_REFERENCES))
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)  # whole builds only: a concurrent reader never sees half of one
    return result


def info_xml() -> bytes:
    """The Info.xml of an NT8 import zip, written the way NT8 8.1 writes it in its own exports: UTF-8
    with a byte order mark, CRLF, the NT8 version under Export and ``<Agile>None</Agile>`` (the
    copy-protection of the export; source exports have none). Source: the packaging script of the
    public NT8 add-on rbruhn/chartjot (addon/package.sh), which reproduces NT8 8.1.8.3's export byte
    for byte; the NT8 Help Guide (NinjaScript > Distribution > Export) describes the zip, not Info.xml."""
    lines = ['<?xml version="1.0" encoding="utf-8"?>', "<NinjaTrader>", "  <Export>",
             f"    <Version>{NT8_VERSION}</Version>", "    <Agile>None</Agile>", "  </Export>", "</NinjaTrader>"]
    return "\r\n".join(lines).encode("utf-8-sig")


def export_zip(out: Path) -> Path:
    """The NT8 import zip (Tools > Import > NinjaScript Add-On): Info.xml and the shipped sources.

    Paths inside the zip mirror ``Documents\\NinjaTrader 8\\bin\\Custom`` (``AddOns/Nt8Bridge/*.cs``,
    ``Strategies/*.cs``), as NT8's own source exports do. Nothing of the simulator goes in.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("Info.xml", info_xml())
        for path in shipped_sources():
            z.write(path, path.relative_to(NINJASCRIPT).as_posix())
    return out
