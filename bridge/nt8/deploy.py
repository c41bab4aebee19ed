"""NT8's user folder, its Custom folder, and putting the NinjaScript there (``nt8bridge ninjascript
install | uninstall``).

NT8 keeps a trader's scripts in ``<user folder>\\bin\\Custom`` (``AddOns\\...``, ``Strategies\\...``)
and compiles every ``*.cs`` under it into one assembly. One type declared twice anywhere in that
folder (an old copy imported under another name, a backup saved as ``.cs``) fails the compile of
every script with CS0101, so the install refuses, naming the files, rather than add a second copy.

Where the user folder is, first found wins: ``--nt8-dir``, then ``$NT8BRIDGE_NT8_DIR``, then on
Windows what NT8 wrote in the registry (``PERSONAL_ROOT`` / ``PERSONAL_ROOT_BIN_CUSTOM`` under
``HKCU\\Software\\NinjaTrader, LLC``), then ``NinjaTrader 8`` in the Documents folder as the shell
knows it (``SHGetKnownFolderPath``, which follows a Documents folder moved to OneDrive), then in
``%USERPROFILE%\\Documents``. A folder counts when it has ``bin\\Custom`` (NT8 creates it at first
start).

What is installed is read back from the files themselves: the wire protocol version is
``Header.Version`` in the installed ``Protocol.cs``, and an installation is this package's when
its files are byte for byte the shipped ones; no side file is written.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath

from bridge.nt8.ninjascript import NINJASCRIPT, shipped_sources

__all__ = ["NT8_DIR_ENV", "Conflict", "DeployError", "InstallResult", "Installed", "Nt8Folder", "declared_types",
           "find_conflicts", "find_nt8_folder", "install_ninjascript", "installed_ninjascript", "protocol_version_of",
           "uninstall_ninjascript", "user_dirs_from_registry_values"]

NT8_DIR_ENV = "NT8BRIDGE_NT8_DIR"
# Value names NT8 writes under HKCU\Software\NinjaTrader, LLC\<product>\cmp<id>, as public NT8 tools
# read them: PERSONAL_ROOT is the user folder, PERSONAL_ROOT_BIN_CUSTOM its bin\Custom.
_REGISTRY_KEYS = (r"Software\NinjaTrader, LLC\NinjaTrader 8", r"Software\NinjaTrader, LLC\NinjaTrader")
_ROOT_VALUE, _CUSTOM_VALUE = "PERSONAL_ROOT", "PERSONAL_ROOT_BIN_CUSTOM"
FOLDERID_DOCUMENTS = "FDD39AD0-238F-46AF-ADB4-6C85480369C7"
_TMP_SUFFIX = ".nt8bridge-tmp"  # not .cs: NT8 never compiles a half-copied file


class DeployError(RuntimeError):
    """The NT8 folder is missing, or installing would break NT8's compile; the message says what to do."""


# --- where NT8 keeps its scripts ----------------------------------------------------------------------

@dataclass(frozen=True)
class Nt8Folder:
    user_dir: Path
    source: str  # how it was found: --nt8-dir, NT8BRIDGE_NT8_DIR, registry, Documents, USERPROFILE

    @property
    def custom_dir(self) -> Path:
        return self.user_dir / "bin" / "Custom"


def _is_user_dir(path: Path) -> bool:
    return (path / "bin" / "Custom").is_dir()


def find_nt8_folder(explicit: Path | None = None, env: Mapping[str, str] | None = None) -> Nt8Folder:
    """NT8's user folder (see the module docstring for the order); DeployError saying where it looked."""
    env = os.environ if env is None else env
    given = [(explicit, "--nt8-dir")] if explicit is not None else []
    if not given and env.get(NT8_DIR_ENV):
        given = [(Path(env[NT8_DIR_ENV]), NT8_DIR_ENV)]
    if given:  # a folder the user named is the answer or an error, never silently replaced by a guess
        path, source = given[0]
        if _is_user_dir(path):
            return Nt8Folder(path, source)
        raise DeployError(f"{path} (from {source}) is not NT8's user folder: it has no bin{os.sep}Custom. Give the "
                          "folder that holds NT8's bin, db and log folders (usually Documents\\NinjaTrader 8)")
    if sys.platform != "win32":
        raise DeployError("NT8 runs on Windows: on this machine give its user folder with --nt8-dir DIR (or "
                          f"{NT8_DIR_ENV})")
    looked = []
    for path, source in _windows_candidates():
        if _is_user_dir(path):
            return Nt8Folder(path, source)
        looked.append(f"{path} ({source})")
    raise DeployError("NT8's user folder was not found (looked in: " + "; ".join(looked or ["nowhere"]) + "). Install "
                      "NinjaTrader 8 and start it once (it creates the folder), or give --nt8-dir DIR")


def user_dirs_from_registry_values(values: Iterable[tuple[str, str]]) -> list[PureWindowsPath]:
    """User folders named by NT8's registry values, (name, data) pairs, in their order."""
    found: list[PureWindowsPath] = []
    for name, data in values:
        if not data.strip():
            continue
        path = PureWindowsPath(data.strip().rstrip("\\/"))
        if name.upper() == _ROOT_VALUE:
            found.append(path)
        elif name.upper() == _CUSTOM_VALUE and len(path.parts) > 2:
            found.append(path.parents[1])  # ...\NinjaTrader 8\bin\Custom -> ...\NinjaTrader 8
    return found


def _windows_candidates() -> list[tuple[Path, str]]:
    """Windows only: the registry's folders, then Documents (known folder), then %USERPROFILE%\\Documents."""
    out = [(Path(p), "registry") for p in user_dirs_from_registry_values(_registry_values())]
    documents = _documents_folder()
    if documents is not None:
        out.append((documents / "NinjaTrader 8", "Documents"))
    profile = os.environ.get("USERPROFILE")
    if profile:
        out.append((Path(profile) / "Documents" / "NinjaTrader 8", "USERPROFILE"))
    return out


def _registry_values() -> list[tuple[str, str]]:
    """Every string value of NT8's HKCU keys and their subkeys (one per NT8 installation), expanded."""
    import winreg

    values: list[tuple[str, str]] = []

    def read(key: "winreg.HKEYType") -> None:
        i = 0
        while True:
            try:
                name, data, kind = winreg.EnumValue(key, i)
            except OSError:
                return
            if kind in (winreg.REG_SZ, winreg.REG_EXPAND_SZ) and isinstance(data, str):
                values.append((name, winreg.ExpandEnvironmentStrings(data) if kind == winreg.REG_EXPAND_SZ
                               else data))
            i += 1

    for path in _REGISTRY_KEYS:
        try:
            key = winreg.OpenKey(winreg.HKEY_CURRENT_USER, path)
        except OSError:
            continue
        with key:
            read(key)
            i = 0
            while True:
                try:
                    sub = winreg.EnumKey(key, i)
                except OSError:
                    break
                try:
                    with winreg.OpenKey(key, sub) as subkey:
                        read(subkey)
                except OSError:
                    pass
                i += 1
    return values


def _documents_folder() -> Path | None:
    """The Documents folder from SHGetKnownFolderPath(FOLDERID_Documents), None when the shell has none."""
    import ctypes
    import uuid
    from ctypes import wintypes

    shell32, ole32 = ctypes.windll.shell32, ctypes.windll.ole32
    shell32.SHGetKnownFolderPath.argtypes = [ctypes.c_void_p, wintypes.DWORD, wintypes.HANDLE,
                                             ctypes.POINTER(ctypes.c_void_p)]
    shell32.SHGetKnownFolderPath.restype = ctypes.c_long
    ole32.CoTaskMemFree.argtypes = [ctypes.c_void_p]
    guid = ctypes.create_string_buffer(uuid.UUID(FOLDERID_DOCUMENTS).bytes_le, 16)
    out = ctypes.c_void_p()
    try:
        if shell32.SHGetKnownFolderPath(guid, 0, None, ctypes.byref(out)) != 0 or not out.value:
            return None
        return Path(ctypes.wstring_at(out.value))
    finally:
        ole32.CoTaskMemFree(out)  # the shell allocates the string even when the call fails


# --- what C# files declare ------------------------------------------------------------------------------

# comments and string or char literals: their words are not declarations and their braces not blocks
_NOISE = re.compile(r'//[^\n]*|/\*.*?\*/|@"(?:[^"]|"")*"|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'', re.S)
_TOKENS = re.compile(r"\bnamespace\s+(?P<ns>[A-Za-z_][\w.]*)|\b(?:class|struct|enum|interface)\s+(?P<type>[A-Za-z_]\w*)"
                     r"|(?P<open>\{)|(?P<close>\})")


def declared_types(text: str) -> set[str]:
    """Full names (``Namespace.Type``) of the types a C# file declares at namespace level; nested types
    cannot clash across files, so they are left out."""
    frames: list[str | None] = []  # for each open brace: the namespace it opens, or None for any other block
    pending_ns: str | None = None
    found: set[str] = set()
    for m in _TOKENS.finditer(_NOISE.sub(" ", text)):
        if m["ns"]:
            pending_ns = m["ns"]
        elif m["type"]:
            if all(f is not None for f in frames):
                found.add(".".join([*frames, m["type"]]))  # type: ignore[list-item]
        elif m["open"]:
            frames.append(pending_ns)
            pending_ns = None
        elif frames:
            frames.pop()
    return found


def protocol_version_of(protocol_cs: str) -> int | None:
    """The wire protocol version a Protocol.cs speaks (``Header.Version``), None when it has none."""
    m = re.search(r"\bclass\s+Header\b.*?\bconst\s+byte\s+Version\s*=\s*(\d+)\s*;", _NOISE.sub(" ", protocol_cs), re.S)
    return int(m.group(1)) if m else None


# --- install, inspect, uninstall ------------------------------------------------------------------------

def _ours() -> dict[str, Path]:
    """The shipped sources by their path under Custom (``AddOns/Nt8Bridge/Protocol.cs``, ...)."""
    ours = {p.relative_to(NINJASCRIPT).as_posix(): p for p in shipped_sources()}
    if not ours:  # an installation without the ninjascript folder: nothing to install, and nothing to say so
        raise DeployError(f"the NinjaScript sources are missing from {NINJASCRIPT}: reinstall nt8bridge with its "
                          "ninjascript folder (the installer and `pip install -e .` of a clone keep it)")
    return ours


def _our_types() -> set[str]:
    return set().union(*(declared_types(p.read_text(encoding="utf-8")) for p in shipped_sources()))


@dataclass(frozen=True)
class Conflict:
    path: Path
    types: tuple[str, ...]


def find_conflicts(custom_dir: Path) -> list[Conflict]:
    """Files under Custom, other than ours at our paths, that declare one of our types."""
    ours = {rel.casefold() for rel in _ours()}  # NT8's folders live on case-insensitive file systems
    types = _our_types()
    conflicts = []
    for path in sorted(custom_dir.rglob("*")):
        if path.suffix.lower() != ".cs" or not path.is_file():
            continue
        if path.relative_to(custom_dir).as_posix().casefold() in ours:
            continue
        clash = declared_types(path.read_text(encoding="utf-8", errors="replace")) & types
        if clash:
            conflicts.append(Conflict(path, tuple(sorted(clash))))
    return conflicts


def _conflict_error(custom_dir: Path, conflicts: list[Conflict]) -> DeployError:
    lines = [f"  {c.path}: {', '.join(c.types)}" for c in conflicts]
    return DeployError(f"nothing was installed: these files in {custom_dir} declare types that nt8bridge's NinjaScript "
                       "declares too, and NT8 cannot compile any script while a type is declared twice (CS0101):\n"
                       + "\n".join(lines) + "\nThey are most likely an older copy of nt8bridge's NinjaScript imported "
                       "under another name, or a backup saved as .cs. Delete them (or move them out of bin\\Custom), "
                       "then run `nt8bridge ninjascript install` again.")


def _require_custom(custom_dir: Path) -> None:
    if not custom_dir.is_dir():
        raise DeployError(f"{custom_dir} does not exist: it is not NT8's bin\\Custom folder (start NT8 once to create "
                          "it, or give --nt8-dir)")


@dataclass(frozen=True)
class InstallResult:
    custom_dir: Path
    written: list[Path]
    replaced: list[Path]  # of these, the ones that were there before (an upgrade)


def install_ninjascript(custom_dir: Path) -> InstallResult:
    """Copy the shipped sources into NT8's Custom folder, replacing ours; refuses (copying nothing) when
    another file there declares one of our types."""
    _require_custom(custom_dir)
    conflicts = find_conflicts(custom_dir)
    if conflicts:
        raise _conflict_error(custom_dir, conflicts)
    written, replaced = [], []
    for rel, source in _ours().items():
        target = custom_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            replaced.append(target)
        tmp = target.with_name(target.name + _TMP_SUFFIX)
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
        written.append(target)
    return InstallResult(custom_dir, written, replaced)


@dataclass(frozen=True)
class Installed:
    """What of nt8bridge's NinjaScript is in a Custom folder."""

    custom_dir: Path
    present: list[str] = field(default_factory=list)  # paths under Custom
    missing: list[str] = field(default_factory=list)
    protocol_version: int | None = None  # from the installed Protocol.cs
    identical: bool = False  # every file is byte for byte the one this package ships
    conflicts: list[Conflict] = field(default_factory=list)


def installed_ninjascript(custom_dir: Path) -> Installed:
    _require_custom(custom_dir)
    ours = _ours()
    present = [rel for rel in ours if (custom_dir / rel).is_file()]
    missing = [rel for rel in ours if rel not in present]
    protocol = next((rel for rel in present if rel.endswith("/Protocol.cs")), None)
    version = None
    if protocol is not None:
        version = protocol_version_of((custom_dir / protocol).read_text(encoding="utf-8", errors="replace"))
    identical = not missing and all((custom_dir / rel).read_bytes() == ours[rel].read_bytes() for rel in present)
    return Installed(custom_dir, present, missing, version, identical, find_conflicts(custom_dir))


def uninstall_ninjascript(custom_dir: Path) -> list[Path]:
    """Remove exactly our files at our paths (and our AddOns folder once empty); returns what was removed."""
    _require_custom(custom_dir)
    removed = []
    for rel in _ours():
        target = custom_dir / rel
        if target.is_file():
            target.unlink()
            removed.append(target)
    for folder in sorted({(custom_dir / rel).parent for rel in _ours()}, key=lambda p: len(p.parts), reverse=True):
        if folder != custom_dir and folder.is_dir() and not any(folder.iterdir()) and folder.parent != custom_dir:
            folder.rmdir()  # AddOns\Nt8Bridge is ours; AddOns and Strategies are NT8's
    return removed
