"""Shared pytest fixtures: where the team's real market data lives, and when to skip without it."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
# one contract per bracket, no regime switch: for tests of the NT8 <-> sidecar mechanics (see the file)
PLUMBING_CONFIG = REPO_ROOT / "tests" / "plumbing.toml"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder ../shared/data (real ES, NQ, MES, MYM, SPY files); skips when it is truly absent."""
    if not (SHARED_DATA / "nt8").is_dir():
        pytest.skip(f"real market data not found at {SHARED_DATA} (CI always has it; a user's machine need not)")
    return SHARED_DATA


# --------------------------------------------------------------------------- PostgreSQL
#
# pg_url: a server the tests may create databases on. NT8BRIDGE_TEST_PG_URL when set (CI starts a
# throwaway cluster with .ci/pg-start), else a throwaway cluster started here from initdb/pg_ctl,
# else the PostgreSQL tests skip. pg_clean_url: an empty database of its own for each test.

import os  # noqa: E402 - kept with the fixtures that need them, below the original file
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402

PG_URL_ENV = "NT8BRIDGE_TEST_PG_URL"
_PG_INSTALL_HINT = (
    f"PostgreSQL tests need {PG_URL_ENV} (a server where databases may be created, "
    "e.g. from `eval \"$(bash .ci/pg-start)\"`) or the PostgreSQL server binaries initdb/pg_ctl "
    "(Debian/Ubuntu: apt install postgresql) and psycopg (pip install 'psycopg[binary]')"
)


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return os.path.realpath(found)
    # Debian/Ubuntu keep the server binaries out of PATH.
    def major(path: Path) -> int:
        return int(path.parts[-3]) if path.parts[-3].isdigit() else 0

    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=major)
    return str(versions[-1]) if versions else None


def _free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _libpq_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class PgCluster:
    """A throwaway PostgreSQL cluster in a temporary folder, listening on a free loopback port.

    initdb and postgres refuse to run as root, so as root the folder is given to the `postgres`
    system user and the tools run through `runuser -u postgres --`.
    """

    def __init__(self) -> None:
        initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        if initdb is None or pg_ctl is None:
            pytest.skip(_PG_INSTALL_HINT)
        self._initdb, self._pg_ctl = initdb, pg_ctl
        self._as_owner: list[str] = []
        self.base = Path(tempfile.mkdtemp(prefix="nt8bridge-pg-"))
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            try:
                import pwd

                owner = pwd.getpwnam("postgres")
            except KeyError:
                shutil.rmtree(self.base)
                pytest.skip("running as root and there is no 'postgres' user to own a throwaway cluster")
            os.chown(self.base, owner.pw_uid, owner.pw_gid)
            self._as_owner = ["runuser", "-u", "postgres", "--"]
        self.port = _free_loopback_port()
        self.running = False
        self._run([self._initdb, "-D", str(self.base / "data"), "-U", "postgres", "--auth=trust",
                   "--encoding=UTF8", "--no-locale"])

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the maintenance database `postgres`."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, cmd: list[str]) -> None:
        result = subprocess.run(self._as_owner + cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            log_file = self.base / "server.log"
            server_log = log_file.read_text(errors="replace")[-4000:] if log_file.exists() else ""
            raise RuntimeError(f"{cmd[0]} failed: {result.stdout}{result.stderr}\n{server_log}")

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
        self._run([self._pg_ctl, "-D", str(self.base / "data"), "-l", str(self.base / "server.log"),
                   "-w", "-t", "60", "-o", options, "start"])
        self.running = True

    def stop(self) -> None:
        """Stop the server now (open connections are cut, as in a crash or a restart)."""
        self._run([self._pg_ctl, "-D", str(self.base / "data"), "-m", "fast", "-w", "stop"])
        self.running = False

    def destroy(self) -> None:
        """Stop the server if running and delete its files."""
        if self.running:
            try:
                self._run([self._pg_ctl, "-D", str(self.base / "data"), "-m", "immediate", "-w", "stop"])
            finally:
                self.running = False
        shutil.rmtree(self.base, ignore_errors=True)


def _require_psycopg() -> None:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip(_PG_INSTALL_HINT)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """SQLAlchemy URL of a PostgreSQL server (its maintenance database) where tests may create databases."""
    _require_psycopg()
    from_env = os.environ.get(PG_URL_ENV)
    if from_env:
        yield from_env
        return
    cluster = PgCluster()
    try:
        cluster.start()
        yield cluster.url
    finally:
        cluster.destroy()


@pytest.fixture
def pg_database_factory(pg_url: str) -> Iterator[Callable[[], str]]:
    """Creates empty databases on the test server on demand; drops them all after the test."""
    import psycopg
    from sqlalchemy.engine import make_url

    created: list[str] = []

    def admin(sql: str) -> None:
        with psycopg.connect(_libpq_url(pg_url), autocommit=True) as conn:
            conn.execute(sql)

    def make() -> str:
        name = f"nt8bridge_test_{uuid.uuid4().hex[:12]}"
        admin(f'CREATE DATABASE "{name}"')
        created.append(name)
        return make_url(pg_url).set(database=name).render_as_string(hide_password=False)

    yield make
    for name in created:
        # Writers that failed a test may still hold connections: cut them before dropping.
        admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
              f"WHERE datname = '{name}' AND pid <> pg_backend_pid()")
        admin(f'DROP DATABASE IF EXISTS "{name}"')


@pytest.fixture
def pg_clean_url(pg_database_factory: Callable[[], str]) -> str:
    """SQLAlchemy URL of a new, empty PostgreSQL database, dropped after the test."""
    return pg_database_factory()


@pytest.fixture
def pg_private_cluster() -> Iterator[PgCluster]:
    """A running throwaway cluster of the test's own, for tests that stop and restart the server."""
    _require_psycopg()
    cluster = PgCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same storage test on an SQLite file and on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'recording.sqlite'}"
    return str(request.getfixturevalue("pg_clean_url"))


@pytest.fixture(scope="session")
def nt8(tmp_path_factory):
    """The NinjaScript and the NT8 simulator, compiled with mcs and loaded into Mono through
    pythonnet, once per test session (Mono can be hosted once per process): the runtime dict of
    ``bridge.nt8.simulator.load_runtime``."""
    import shutil

    if shutil.which("mcs") is None:
        pytest.skip("Mono's mcs is not installed (apt-get install mono-devel; .ci/run installs it)")
    from bridge.nt8.ninjascript import build
    from bridge.nt8.simulator import load_runtime

    return load_runtime(build(tmp_path_factory.mktemp("nt8build")))


@pytest.fixture(scope="session")
def cs(nt8):
    """The shipped C# helpers (namespace NinjaTrader.NinjaScript.AddOns.Nt8Bridge) as a Python module."""
    import NinjaTrader.NinjaScript.AddOns.Nt8Bridge as nb

    return nb


# --------------------------------------------------------------------------- long forms
#
# The chaos and fuzz tests run a short form by default (CI); --full runs the long one (a million hostile
# messages, twenty kills of the sidecar, an hour of market time in the soak).


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--full", action="store_true", default=False,
                     help="run the long forms of the chaos, soak and fuzz tests (tens of minutes)")


@pytest.fixture(scope="session")
def full(request: pytest.FixtureRequest) -> bool:
    """True with --full: tests with a short and a long form run the long one."""
    return bool(request.config.getoption("--full"))
