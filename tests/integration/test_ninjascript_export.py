"""The NT8 import zip (``nt8bridge ninjascript export``): it opens, its Info.xml is what NT8 8.1 writes,
it holds the shipped sources and nothing of the simulator, and those sources, taken out of the zip,
compile with mcs against the simulator's NT8 API as NT8 would compile them."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile

import pytest

from bridge.nt8.ninjascript import (FRAMEWORK_REFERENCES, NINJASCRIPT, NINJASCRIPT_DLL, SIMULATOR_DLL, compile_library,
                                    shipped_sources, simulator_sources)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "nt8bridge-ninjascript.zip"
    done = subprocess.run([sys.executable, "-m", "bridge.cli", "ninjascript", "export", "--to", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"{out}: Info.xml and {len(shipped_sources())} source files" in done.stdout
    return out


def test_the_zip_opens_and_holds_info_xml_and_exactly_the_shipped_sources(exported):
    with zipfile.ZipFile(exported) as z:
        assert z.testzip() is None
        names = z.namelist()
    expected = sorted(p.relative_to(NINJASCRIPT).as_posix() for p in shipped_sources())
    assert names[0] == "Info.xml" and sorted(names[1:]) == expected
    assert expected == ["AddOns/Nt8Bridge/Link.cs", "AddOns/Nt8Bridge/Protocol.cs", "AddOns/Nt8Bridge/Zmtp.cs",
                        "Strategies/Nt8Bridge.cs"]
    assert not any("Simulator" in n or n.endswith((".dll", ".txt")) for n in names)


def test_info_xml_is_what_nt8_8_1_writes_in_an_export(exported):
    with zipfile.ZipFile(exported) as z:
        raw = z.read("Info.xml")
    assert raw.startswith(b"\xef\xbb\xbf<?xml") and b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")
    root = ET.fromstring(raw)
    assert root.tag == "NinjaTrader" and [c.tag for c in root] == ["Export"]
    export = root.find("Export")
    assert [c.tag for c in export] == ["Version", "Agile"]
    assert re.fullmatch(r"8\.1\.\d+\.\d+", export.findtext("Version"))
    assert export.findtext("Agile") == "None"  # source, no copy protection


@pytest.mark.skipif(shutil.which("mcs") is None,
                    reason="Mono's mcs is not installed (apt-get install mono-devel; .ci/run installs it): the "
                           "exported sources cannot be compiled here")
def test_the_exported_sources_compile_against_the_simulators_nt8_api(exported, tmp_path):
    with zipfile.ZipFile(exported) as z:
        z.extractall(tmp_path / "custom")
    sources = sorted((tmp_path / "custom").rglob("*.cs"))
    assert len(sources) == len(shipped_sources())
    simulator = compile_library(simulator_sources(), tmp_path / "build" / SIMULATOR_DLL)
    built = compile_library(sources, tmp_path / "build" / NINJASCRIPT_DLL, (str(simulator), *FRAMEWORK_REFERENCES))
    assert built.stat().st_size > 0
