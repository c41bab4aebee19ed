"""What the console's tests and bench/bench_console.py share: free loopback ports, an environment without the
user's own configuration, the `nt8bridge console` process, and headless Chromium driven by Selenium (at
normal or idle scheduling priority), with a few reads of the page the tests and the bench both make."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bridge.transport.sidecar import child_creationflags, interrupt_signal
from tests.integration.test_server import free_port  # noqa: F401 - the console tests import it from here

CLI = [sys.executable, "-m", "bridge.cli"]
REPO = Path(__file__).resolve().parents[2]
# Debian's packages (chromium, chromium-driver); .ci/run installs them
CHROMIUM = Path(os.environ.get("NT8BRIDGE_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("NT8BRIDGE_CHROMEDRIVER", "/usr/bin/chromedriver"))
WINDOW = (1280, 800)  # the page as a desk's laptop shows it; the screenshots in docs/ are this size
# Windows: a child process inherits its creator's priority class when the creator's is IDLE or BELOW_NORMAL
IDLE_PRIORITY_CLASS = 0x00000040


def clean_env(tmp_path: Path) -> dict[str, str]:
    """This environment without NT8BRIDGE_ variables and with an empty user config folder under ``tmp_path``,
    the worktree first on the import path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NT8BRIDGE_")}
    env["XDG_CONFIG_HOME"] = env["APPDATA"] = str(tmp_path / "no-user-config")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def wait_for(condition, what: str, timeout_s: float = 30.0, every_s: float = 0.05, seen=None) -> Any:
    """Poll ``condition`` until it returns something true, and return that; AssertionError naming ``what``
    after ``timeout_s`` (a bound on waiting, not a speed requirement), with ``seen()`` (what there was
    instead) when given."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = condition()
        if got:
            return got
        if time.monotonic() >= deadline:
            raise AssertionError(f"never happened: {what}" + (f"; instead: {seen()}" if seen else ""))
        time.sleep(every_s)


class ConsoleProcess:
    """``nt8bridge console`` in a child process on a free loopback port; ``url`` once it answers."""

    def __init__(self, folder: Path, *, db_url: str, events: str, control: str, config: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.folder = folder
        self.ready = folder / "console.url"
        self.log_path = folder / "console.log"
        self.cmd = [*CLI, *(["--config", str(config)] if config else []), "console", "--bind", "127.0.0.1:0",
                    "--ready-file", str(self.ready), "--db", db_url, "--events", events, "--sidecar", control]
        self.env = env if env is not None else clean_env(folder)
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self, timeout_s: float = 60.0) -> str:
        self.ready.unlink(missing_ok=True)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                         creationflags=child_creationflags())
        wait_for(lambda: self.ready.exists() or self.proc.poll() is not None, "the console listens", timeout_s)
        if self.proc.poll() is not None:
            raise RuntimeError(f"the console exited with code {self.proc.returncode}: {self.log()[-3000:]}")
        self.url = self.ready.read_text(encoding="utf-8")
        return self.url

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout_s: float = 60.0) -> int:
        """Ctrl+C (Ctrl+Break on Windows), as an operator stops it; killed if it does not stop."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(interrupt_signal())
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> ConsoleProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- headless Chromium


def chromium_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install nt8bridge[dev])"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not path.exists():
            return f"{path} is absent (apt-get install chromium chromium-driver; .ci/run installs {package})"
    return None


def _lower_priority() -> None:
    """In the chromedriver child before it runs: SCHED_IDLE, which Chromium's processes and threads inherit,
    so the browser gets a CPU only when nothing else wants it (the sidecar, on a desk's own machine)."""
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def start_chromium(*, idle: bool = False, window: tuple[int, int] = WINDOW):
    """A headless Chromium under Selenium, its viewport ``window`` CSS pixels at scale 1.

    ``idle``: the browser runs at idle priority, as docs/console.md advises for a console browser on the
    sidecar's machine: SCHED_IDLE on Linux (``chrt --idle 0`` does the same from a shell), the IDLE priority
    class on Windows (``start /low``), both inherited by every process the browser starts."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--disable-extensions", "--no-first-run", "--mute-audio", "--hide-scrollbars",
                f"--window-size={window[0]},{window[1]}"):
        options.add_argument(arg)
    popen: dict[str, Any] = {}
    if idle:
        if sys.platform == "win32":
            popen["creation_flags"] = IDLE_PRIORITY_CLASS
        elif hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
            popen["preexec_fn"] = _lower_priority
        else:  # macOS: the nice value is what there is
            popen["preexec_fn"] = lambda: os.nice(19)
    service = Service(str(CHROMEDRIVER), popen_kw=popen)
    driver = webdriver.Chrome(service=service, options=options)
    # the window's frame takes some of --window-size: the viewport itself is set to the size asked
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": window[0], "height": window[1], "deviceScaleFactor": 1, "mobile": False})
    return driver


def browser_pids(driver) -> list[int]:
    """chromedriver and every process below it (Linux: from /proc; elsewhere only chromedriver's pid)."""
    root = driver.service.process.pid
    if not Path("/proc").is_dir():
        return [root]
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def cpu_seconds(pids: list[int]) -> float | None:
    """User + system CPU time of ``pids`` so far (Linux), None elsewhere."""
    if not Path("/proc").is_dir():
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone since it was listed
        total += int(fields[11]) + int(fields[12])
    return total / ticks


# --------------------------------------------------------------------------- reading the page

# Every element with this data-testid, as {its data-* attributes, snake_case: value, "text", "hidden"} (hidden:
# the element or one of its ancestors is not displayed); data-client-order-id is "client_order_id".
_READ = """
return Array.from(document.querySelectorAll('[data-testid="' + arguments[0] + '"]')).map((e) => {
  const out = {text: e.textContent.trim(), hidden: e.closest('[hidden]') !== null};
  for (const a of e.attributes) if (a.name.startsWith('data-')) out[a.name.slice(5).replace(/-/g, '_')] = a.value;
  return out;
});
"""


def read(driver, testid: str) -> list[dict[str, Any]]:
    return driver.execute_script(_READ, testid)


def drain_paint_log(driver) -> list[dict[str, Any]]:
    """The page's window.__paintLog entries since the last drain (they are taken out of the page)."""
    return driver.execute_script("return (window.__paintLog || []).splice(0);") or []


# A MutationObserver counting the batches of DOM changes (one per task or frame that changed the page).
WATCH_MUTATIONS = """
window.__mutationBatches = [];
new MutationObserver(() => window.__mutationBatches.push(performance.now()))
  .observe(document.body, {subtree: true, childList: true, attributes: true, characterData: true});
"""
