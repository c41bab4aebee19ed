"""Installing the NinjaScript into NT8's Custom folder (bridge/nt8/deploy.py), on fake NT8 folders."""

from __future__ import annotations

import re
from pathlib import Path, PureWindowsPath

import pytest

from bridge.nt8.deploy import (DeployError, declared_types, find_nt8_folder, install_ninjascript, installed_ninjascript,
                               protocol_version_of, uninstall_ninjascript, user_dirs_from_registry_values)
from bridge.nt8.ninjascript import NINJASCRIPT, shipped_sources
from bridge.protocol.messages import PROTOCOL_VERSION

OURS = sorted(p.relative_to(NINJASCRIPT).as_posix() for p in shipped_sources())


def nt8_folder(tmp_path: Path) -> Path:
    """A fake NT8 user folder with a few of NT8's own scripts in bin\\Custom."""
    user = tmp_path / "NinjaTrader 8"
    custom = user / "bin" / "Custom"
    (custom / "Indicators").mkdir(parents=True)
    (custom / "Strategies").mkdir()
    (custom / "AddOns").mkdir()
    (custom / "Indicators" / "SMA.cs").write_text(
        "namespace NinjaTrader.NinjaScript.Indicators\n{\n\tpublic class SMA : Indicator { }\n}\n", encoding="utf-8")
    (custom / "Strategies" / "SampleMACrossOver.cs").write_text(
        "namespace NinjaTrader.NinjaScript.Strategies\n{\n\tpublic class SampleMACrossOver : Strategy { }\n}\n",
        encoding="utf-8")
    return user


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_fresh_install_puts_exactly_the_shipped_sources_at_their_paths(tmp_path):
    custom = nt8_folder(tmp_path) / "bin" / "Custom"
    before = snapshot(custom)
    result = install_ninjascript(custom)
    after = snapshot(custom)
    assert sorted(set(after) - set(before)) == OURS
    assert all(after[rel] == (NINJASCRIPT / rel).read_bytes() for rel in OURS)
    assert {k: v for k, v in after.items() if k in before} == before  # NT8's own scripts untouched
    assert result.replaced == [] and len(result.written) == len(OURS)
    installed = installed_ninjascript(custom)
    assert installed.missing == [] and installed.identical and installed.conflicts == []
    assert installed.protocol_version == PROTOCOL_VERSION


def test_installing_over_our_own_older_copy_replaces_it(tmp_path):
    custom = nt8_folder(tmp_path) / "bin" / "Custom"
    install_ninjascript(custom)
    strategy = custom / "Strategies" / "Nt8Bridge.cs"
    strategy.write_text(strategy.read_text(encoding="utf-8") + "\n// edited by hand\n", encoding="utf-8")
    protocol = custom / "AddOns" / "Nt8Bridge" / "Protocol.cs"
    older = protocol.read_text(encoding="utf-8").replace("public const byte Version = 1;", "public const byte Version = 0;")
    protocol.write_text(older, encoding="utf-8")
    old = installed_ninjascript(custom)
    assert old.protocol_version == 0 and not old.identical and old.conflicts == []
    result = install_ninjascript(custom)
    assert sorted(p.relative_to(custom).as_posix() for p in result.replaced) == OURS
    now = installed_ninjascript(custom)
    assert now.identical and now.protocol_version == PROTOCOL_VERSION
    assert not list(custom.rglob("*.nt8bridge-tmp"))


def test_a_foreign_file_declaring_one_of_our_types_is_refused_and_nothing_is_copied(tmp_path):
    custom = nt8_folder(tmp_path) / "bin" / "Custom"
    copy = custom / "Strategies" / "Nt8Bridge - Copy.cs"  # Windows Explorer's name for a duplicated file
    copy.write_text((NINJASCRIPT / "Strategies" / "Nt8Bridge.cs").read_text(encoding="utf-8"), encoding="utf-8")
    old_codec = custom / "AddOns" / "OldBridge" / "Codec.cs"
    old_codec.parent.mkdir()
    old_codec.write_text("// an older import\nnamespace NinjaTrader.NinjaScript.AddOns.Nt8Bridge\n{\n"
                         "    public static class Codec { }\n    public enum Unrelated { A }\n}\n", encoding="utf-8")
    before = snapshot(custom)
    with pytest.raises(DeployError) as err:
        install_ninjascript(custom)
    text = str(err.value)
    assert str(copy) in text and "NinjaTrader.NinjaScript.Strategies.Nt8BridgeStrategy" in text
    assert str(old_codec) in text and "NinjaTrader.NinjaScript.AddOns.Nt8Bridge.Codec" in text
    assert "Unrelated" not in text  # only the types that clash are named
    assert "CS0101" in text and "Delete them" in text and "nothing was installed" in text
    assert snapshot(custom) == before
    assert [c.path for c in installed_ninjascript(custom).conflicts] == [old_codec, copy]


def test_uninstall_removes_only_our_files(tmp_path):
    custom = nt8_folder(tmp_path) / "bin" / "Custom"
    before = snapshot(custom)
    install_ninjascript(custom)
    mine = custom / "AddOns" / "Nt8Bridge" / "Notes.txt"  # something the trader put in our folder
    mine.write_text("keep me", encoding="utf-8")
    removed = uninstall_ninjascript(custom)
    assert sorted(p.relative_to(custom).as_posix() for p in removed) == OURS
    assert snapshot(custom) == {**before, "AddOns/Nt8Bridge/Notes.txt": b"keep me"}
    mine.unlink()
    install_ninjascript(custom)
    uninstall_ninjascript(custom)
    assert snapshot(custom) == before
    assert not (custom / "AddOns" / "Nt8Bridge").exists()  # our folder goes once empty
    assert (custom / "AddOns").is_dir() and (custom / "Strategies").is_dir()  # NT8's stay
    assert uninstall_ninjascript(custom) == []


def test_declared_types_reads_namespace_level_declarations_only():
    text = '''
    using System; // a class Commented { } in a comment
    /* class Block { } */
    namespace A.B
    {
        [Display(Name = "class Quoted { }")]
        public sealed class Outer<T> where T : class
        {
            private sealed class Nested { }
            string s = "}";  char c = '{';
        }
        internal enum Kind : byte { One, Two }
        public interface IThing { }
        namespace C { struct Point { } }
    }
    public class Global { }
    '''
    assert declared_types(text) == {"A.B.Outer", "A.B.Kind", "A.B.IThing", "A.B.C.Point", "Global"}


def test_our_sources_declare_their_types_and_protocol_cs_carries_the_wire_version():
    protocol = (NINJASCRIPT / "AddOns" / "Nt8Bridge" / "Protocol.cs").read_text(encoding="utf-8")
    assert protocol_version_of(protocol) == PROTOCOL_VERSION  # the C# and the Python speak one version
    assert protocol_version_of("class Other { const byte Version = 3; }") is None
    strategy = declared_types((NINJASCRIPT / "Strategies" / "Nt8Bridge.cs").read_text(encoding="utf-8"))
    assert "NinjaTrader.NinjaScript.Strategies.Nt8BridgeStrategy" in strategy
    assert not any(name.endswith((".Leg", ".Bracket")) for name in strategy)  # nested in the strategy


def test_the_nt8_folder_comes_from_the_option_then_the_environment_and_a_wrong_one_is_an_error(tmp_path):
    user = nt8_folder(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    assert find_nt8_folder(user, env={}).custom_dir == user / "bin" / "Custom"
    found = find_nt8_folder(None, env={"NT8BRIDGE_NT8_DIR": str(user)})
    assert (found.user_dir, found.source) == (user, "NT8BRIDGE_NT8_DIR")
    assert find_nt8_folder(user, env={"NT8BRIDGE_NT8_DIR": str(other)}).source == "--nt8-dir"
    with pytest.raises(DeployError, match=re.escape(f"{other} (from --nt8-dir) is not NT8's user folder")):
        find_nt8_folder(other, env={})


def test_registry_values_name_the_user_folder_directly_or_through_its_custom_folder():
    values = [("PERSONAL_ROOT_BIN_CUSTOM", r"D:\Trading\NinjaTrader 8\bin\Custom"), ("Info", "8.1.2.1"),
              ("PERSONAL_ROOT", "C:\\Users\\ann\\OneDrive\\Documents\\NinjaTrader 8\\"), ("PERSONAL_ROOT", " ")]
    assert user_dirs_from_registry_values(values) == [PureWindowsPath(r"D:\Trading\NinjaTrader 8"),
                                                      PureWindowsPath(r"C:\Users\ann\OneDrive\Documents\NinjaTrader 8")]


def test_without_the_sources_nothing_is_installed_and_it_says_why(tmp_path, monkeypatch):
    import bridge.nt8.deploy as deploy
    monkeypatch.setattr(deploy, "shipped_sources", lambda: [])  # an installation that left ninjascript/ out
    custom = nt8_folder(tmp_path) / "bin" / "Custom"
    before = snapshot(custom)
    with pytest.raises(DeployError, match="NinjaScript sources are missing"):
        install_ninjascript(custom)
    assert snapshot(custom) == before


def test_on_windows_the_registry_comes_before_documents_and_the_first_real_nt8_folder_wins(tmp_path, monkeypatch):
    """The order of the Windows lookups; winreg and SHGetKnownFolderPath themselves run only on Windows."""
    import bridge.nt8.deploy as deploy
    user = nt8_folder(tmp_path / "onedrive")
    monkeypatch.setattr(deploy.sys, "platform", "win32")
    monkeypatch.setattr(deploy, "_registry_values", lambda: [("PERSONAL_ROOT", str(tmp_path / "gone"))])
    monkeypatch.setattr(deploy, "_documents_folder", lambda: tmp_path / "onedrive")
    monkeypatch.setenv("USERPROFILE", str(tmp_path / "profile"))
    assert [source for _, source in deploy._windows_candidates()] == ["registry", "Documents", "USERPROFILE"]
    found = find_nt8_folder(None, env={})
    assert (found.user_dir, found.source) == (user, "Documents")
    monkeypatch.setattr(deploy, "_documents_folder", lambda: None)  # the shell knows no Documents folder
    with pytest.raises(DeployError, match="looked in: .*gone \\(registry\\); .*profile.*\\(USERPROFILE\\)"):
        find_nt8_folder(None, env={})
