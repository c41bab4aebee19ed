"""Engines, migrations and backups for the recording database (SQLite by default, PostgreSQL by URL).

Every failure leaves this module as a :class:`StorageError` whose message says what to do, names
the database without its password, and tells callers whether retrying later can help.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.util import CommandError
from sqlalchemy import Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection, make_url

from bridge.core.config import user_data_dir

log = logging.getLogger("nt8bridge.storage")

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

SQLITE_BUSY_TIMEOUT_S = 5.0
"""How long an SQLite statement waits for another connection's lock (override: ``?timeout=`` in the URL)."""

PG_CONNECT_TIMEOUT_S = 10
"""How long a PostgreSQL connection attempt may take (override: ``?connect_timeout=`` in the URL)."""

# SQLSTATE classes that describe the server or the link, not the data: retrying can succeed.
# 08 connection, 40 rollback (serialisation, deadlock), 53 insufficient resources,
# 57 operator intervention (shutdown, cannot connect now), 58 system error; 55P03 lock not available.
_TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57", "58"})
_TRANSIENT_SQLSTATES = frozenset({"55P03", "55006"})


class StorageError(RuntimeError):
    """A storage failure with a message that says what to do.

    Parameters
    ----------
    message
        What went wrong and how to fix it; never contains a password.
    transient
        True when the cause can go away by itself (server down, file locked), so retrying later
        makes sense; False for configuration errors (bad URL, corrupt file, wrong password).
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


# --------------------------------------------------------------------------- URLs


def safe_url(url: str | URL) -> str:
    """Render ``url`` for messages and logs, with the password masked.

    Parameters
    ----------
    url
        A database URL, parsed or not; unparsable strings are masked with a pattern.

    Returns
    -------
    str
        The URL with ``***`` in place of any password.
    """
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a message helper must never fail
        return re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", str(url))


def parse_url(url: str) -> URL:
    """Parse and normalise a database URL, or explain which URLs are accepted.

    ``postgresql://`` and ``postgres://`` mean psycopg 3 (the driver nt8bridge ships with);
    ``sqlite://`` means the standard library's sqlite3 on a file.

    Parameters
    ----------
    url
        ``sqlite:///path/to/file.sqlite`` or ``postgresql+psycopg://user:pw@host:port/db``.

    Returns
    -------
    URL
        The parsed URL with an explicit driver.

    Raises
    ------
    StorageError
        If the URL is malformed, uses another database, or is an in-memory SQLite URL.
    """
    hint = "use sqlite:///path/to/file.sqlite or postgresql+psycopg://user:password@host:5432/dbname"
    try:
        parsed = make_url(url)
    except (sa_exc.ArgumentError, ValueError) as exc:
        raise StorageError(f"cannot parse the database URL {safe_url(url)!r} ({exc}): {hint}") from None
    # Split the scheme by hand: URL.get_driver_name() imports the dialect, which fails for aliases.
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "sqlite" and driver in ("", "pysqlite"):
        if parsed.database in (None, "", ":memory:"):
            # The writer thread and readers use separate connections: a memory database is not shared.
            raise StorageError(
                f"{safe_url(parsed)!r} is an in-memory SQLite database, which the writer thread cannot share: "
                "give a file path, e.g. sqlite:///recordings.sqlite"
            )
        return parsed.set(drivername="sqlite+pysqlite")
    if backend in ("postgresql", "postgres") and driver in ("", "psycopg"):
        return parsed.set(drivername="postgresql+psycopg")
    raise StorageError(f"unsupported database URL {safe_url(parsed)!r} (scheme {parsed.drivername!r}): {hint}")


def default_db_url() -> str:
    """The default recording database: an SQLite file in the user's data folder.

    ``%LOCALAPPDATA%\\nt8bridge\\nt8bridge.sqlite`` on Windows;
    ``$XDG_DATA_HOME/nt8bridge/nt8bridge.sqlite`` (else ``~/.local/share/nt8bridge/...``) elsewhere.
    The folder is created if missing.

    Returns
    -------
    str
        An ``sqlite:///`` URL with an absolute path.
    """
    folder = user_data_dir()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(folder / 'nt8bridge.sqlite').resolve()}"


# --------------------------------------------------------------------------- engines


def create_engine_for(url: str) -> Engine:
    """Create an engine tuned for recording; it does not connect yet.

    SQLite: WAL journal (readers never block the writer), ``synchronous=NORMAL`` (a commit costs
    no fsync; a power cut can lose the last commits but never corrupts the file), foreign keys
    off, a busy timeout, and explicit ``BEGIN`` so that savepoints work with the sqlite3 module.
    PostgreSQL: ``pool_pre_ping`` so connections broken by a server restart are replaced, and a
    connect timeout so an unreachable server is reported instead of hanging.

    Parameters
    ----------
    url
        Database URL (see :func:`parse_url`).

    Returns
    -------
    Engine
        A SQLAlchemy engine.

    Raises
    ------
    StorageError
        If the URL is not supported.
    """
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed)
    return _postgres_engine(parsed)


def _sqlite_engine(url: URL) -> Engine:
    timeout_s = float(url.query.get("timeout", SQLITE_BUSY_TIMEOUT_S))  # type: ignore[arg-type]
    engine = create_engine(
        url,
        # Pooled connections move between the writer thread and others; each is used by one at a time.
        connect_args={"check_same_thread": False, "timeout": timeout_s},
    )

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        # Autocommit at the driver level: the sqlite3 module's implicit transactions would
        # otherwise commit around SAVEPOINT, and the row-by-row retry relies on savepoints.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
            (mode,) = cursor.execute("PRAGMA journal_mode = WAL").fetchone()
            if str(mode).lower() != "wal":
                log.warning("SQLite file %s refused WAL mode (got %s); readers will block the writer", url.database, mode)
            cursor.execute("PRAGMA synchronous = NORMAL")
            # Rows arrive in whatever order the bridge produces them; references are not enforced.
            cursor.execute("PRAGMA foreign_keys = OFF")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN")

    return engine


def _postgres_engine(url: URL) -> Engine:
    connect_args: dict[str, Any] = {}
    if "connect_timeout" not in url.query:
        connect_args["connect_timeout"] = PG_CONNECT_TIMEOUT_S
    if "application_name" not in url.query:
        connect_args["application_name"] = "nt8bridge"
    # A server that vanished without closing the connection (a network black hole, a host powered off)
    # must fail a commit in seconds, not after the kernel's default of many minutes: the writer then spools
    # instead of holding its thread, and its queue, on a dead socket. Linux honours tcp_user_timeout; the
    # keepalives work everywhere libpq does.
    for key, value in (("keepalives", 1), ("keepalives_idle", 5), ("keepalives_interval", 2),
                       ("keepalives_count", 3), ("tcp_user_timeout", 15_000)):
        if key not in url.query:
            connect_args[key] = value
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args)


# --------------------------------------------------------------------------- errors


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is about the database being unavailable rather than about the data.

    Parameters
    ----------
    exc
        An exception raised while talking to the database (SQLAlchemy-wrapped or raw DB-API).

    Returns
    -------
    bool
        True for lost connections, refused connections, locked or read-only SQLite files, full
        disks and server shutdowns: the same statement can succeed later. False for constraint,
        type and programming errors, which will fail again.
    """
    if isinstance(exc, StorageError):
        return exc.transient
    if isinstance(exc, (sa_exc.DisconnectionError, sa_exc.TimeoutError)):
        return True
    orig: BaseException = exc
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        orig = exc.orig if exc.orig is not None else exc
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate:
        return sqlstate[:2] in _TRANSIENT_SQLSTATE_CLASSES or sqlstate in _TRANSIENT_SQLSTATES
    # No SQLSTATE: sqlite3, or psycopg failing before it reached a server. The DB-API's
    # OperationalError is the class both use for "the database, not the statement".
    return isinstance(exc, sa_exc.OperationalError) or type(orig).__name__ == "OperationalError"


def as_storage_error(url: str | URL, exc: BaseException, doing: str) -> StorageError:
    """Translate a database exception into a :class:`StorageError` that says what to do.

    Parameters
    ----------
    url
        The database the operation was for (rendered without its password).
    exc
        The original exception.
    doing
        What was being attempted, e.g. ``"upgrading the schema"``.

    Returns
    -------
    StorageError
        With ``transient`` set as :func:`is_transient` decides.
    """
    if isinstance(exc, StorageError):
        return exc
    where = safe_url(url)
    orig = exc.orig if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None else exc
    text = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    low = str(orig).lower()
    transient = is_transient(exc)
    sqlstate = getattr(orig, "sqlstate", None) or ""
    db_path = _sqlite_path(url)

    if db_path is not None:
        if "file is not a database" in low or "malformed" in low or "not a database" in low:
            return StorageError(
                f"{doing}: the SQLite file {db_path} is not a database or is damaged ({text}); "
                "restore it from a backup, or move it aside so that a new one is created",
                transient=False,
            )
        if "locked" in low or "busy" in low:
            return StorageError(
                f"{doing}: the SQLite file {db_path} is locked by another program (another nt8bridge, "
                f"or a database browser with an open transaction): close it or let it finish ({text})",
                transient=True,
            )
        if "readonly" in low or "read-only" in low:
            return StorageError(
                f"{doing}: the SQLite file {db_path} is read-only; make the file and its folder writable ({text})",
                transient=True,
            )
        if "unable to open" in low:
            folder = Path(db_path).parent
            why = f"the folder {folder} does not exist" if not folder.is_dir() else "check that its folder is writable"
            return StorageError(f"{doing}: cannot open the SQLite file {db_path}: {why} ({text})", transient=True)
        if "disk" in low and ("full" in low or "i/o" in low):
            return StorageError(f"{doing}: the disk holding {db_path} is full or failing ({text})", transient=True)
        return StorageError(f"{doing} in {where}: {text}", transient=transient)

    if sqlstate in ("28P01", "28000") or "password authentication failed" in low:
        return StorageError(
            f"{doing}: PostgreSQL rejected the login for {where}: check the user name and password ({text})",
            transient=False,
        )
    if sqlstate == "3D000" or ("database" in low and "does not exist" in low):
        dbname = make_url(url).database if not isinstance(url, URL) else url.database
        return StorageError(
            f"{doing}: the database {dbname!r} does not exist on {where}: create it first (createdb {dbname})",
            transient=False,
        )
    if transient and ("connect" in low or "connection" in low or "server" in low or sqlstate.startswith("08")):
        return StorageError(
            f"{doing}: cannot reach PostgreSQL at {where}: is the server running and accepting TCP "
            f"connections on that host and port? ({text})",
            transient=True,
        )
    return StorageError(f"{doing} in {where}: {text}", transient=transient)


def _sqlite_path(url: str | URL) -> str | None:
    try:
        parsed = url if isinstance(url, URL) else make_url(url)
    except Exception:  # noqa: BLE001 - not parsable: not SQLite
        return None
    return parsed.database if parsed.get_backend_name() == "sqlite" else None


# --------------------------------------------------------------------------- migrations


def alembic_config(url: str) -> Config:
    """An Alembic configuration built in code: no ``alembic.ini`` is needed.

    Also the way to write the next migration::

        from alembic import command
        command.revision(alembic_config(url), message="...", autogenerate=True)

    Parameters
    ----------
    url
        Database URL; ``env.py`` uses it when no connection is passed in ``attributes``.

    Returns
    -------
    Config
        With ``script_location`` pointing at this package's ``migrations`` folder.
    """
    cfg = Config()
    # ConfigParser interpolation treats '%' specially; paths and passwords may contain it.
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> str:
    """Bring the database schema to ``revision`` (creating the SQLite file if needed).

    Idempotent: a database already at ``revision`` is left untouched.

    Parameters
    ----------
    url
        Database URL.
    revision
        Alembic revision to upgrade to; ``"head"`` is the newest this nt8bridge knows.

    Returns
    -------
    str
        The revision in force afterwards.

    Raises
    ------
    StorageError
        If the database is unreachable (``transient``), damaged, or newer than this nt8bridge.
    """
    try:
        now = _migrate(url, lambda cfg: command.upgrade(cfg, revision))
    except StorageError:
        raise
    except CommandError as exc:
        raise StorageError(
            f"cannot upgrade {safe_url(url)} to {revision!r}: {exc}. If the database was written by a newer "
            "nt8bridge, upgrade nt8bridge (or use a different database file)",
        ) from None
    except Exception as exc:  # translated, with the original chained
        raise as_storage_error(url, exc, "upgrading the schema") from exc
    if now is None:  # only if revision was "base"
        raise StorageError(f"{safe_url(url)} has no schema revision after upgrading to {revision!r}")
    log.debug("schema of %s is at revision %s", safe_url(url), now)
    return now


def downgrade(url: str, revision: str) -> None:
    """Take the schema back to ``revision`` (each later migration's ``downgrade``): for measuring or testing
    what a migration changed, on a copy; the sidecar never goes back."""
    try:
        _migrate(url, lambda cfg: command.downgrade(cfg, revision))
    except StorageError:
        raise
    except Exception as exc:  # translated, with the original chained
        raise as_storage_error(url, exc, f"downgrading the schema to {revision}") from exc


def _migrate(url: str, step: Callable[[Config], None]) -> str | None:
    """``step`` (an Alembic command) in one transaction on ``url``; the revision in force afterwards."""
    engine = create_engine_for(url)
    try:
        with engine.begin() as connection:
            cfg = alembic_config(url)
            cfg.attributes["connection"] = connection
            step(cfg)
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def current_revision(url: str) -> str | None:
    """The schema revision in force, or None for an empty database (or a missing SQLite file).

    Parameters
    ----------
    url
        Database URL.

    Returns
    -------
    str | None
        The Alembic revision id.

    Raises
    ------
    StorageError
        If the database cannot be read.
    """
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite" and not Path(str(parsed.database)).exists():
        return None  # connecting would create the file as a side effect
    return with_connection(url, "reading the schema revision",
                           lambda conn: MigrationContext.configure(conn).get_current_revision())


_T = TypeVar("_T")


def with_connection(url: str, doing: str, fn: Callable[[Connection], _T]) -> _T:
    """``fn`` on a short-lived connection to ``url`` (engine disposed after); any failure but a StorageError
    becomes one that names ``url`` and what was being done, the original chained."""
    engine = create_engine_for(url)
    try:
        with engine.connect() as conn:
            return fn(conn)
    except StorageError:
        raise
    except Exception as exc:  # translated, with the original chained
        raise as_storage_error(url, exc, doing) from exc
    finally:
        engine.dispose()


def head_revision() -> str:
    """The newest schema revision this nt8bridge knows."""
    from alembic.script import ScriptDirectory
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None, "the migrations folder is empty"
    return head


def probe(url: str) -> str:
    """Whether the sidecar could record into ``url`` now, without creating anything: a sentence saying
    what was found, or StorageError saying what is wrong and what to do.

    An SQLite file that does not exist yet is fine when its folder exists and is writable (the
    sidecar creates it); a schema older than this nt8bridge is fine (the sidecar upgrades it at
    start); a newer one is not."""
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = Path(str(parsed.database))
        if not path.exists():
            folder = path.parent
            if not folder.is_dir():
                raise StorageError(f"the folder {folder} of the SQLite file {path} does not exist: create it, or "
                                   "point storage.url elsewhere")
            if not os.access(folder, os.W_OK):
                raise StorageError(f"the folder {folder} of the SQLite file {path} is not writable: give the user "
                                   "write access to it, or point storage.url elsewhere")
            return f"{path} does not exist yet; the sidecar creates it at start"
    revision = current_revision(url)
    head = head_revision()
    if revision is None:
        return f"{safe_url(url)} is reachable and empty; the sidecar creates the schema at start"
    from alembic.script import ScriptDirectory
    try:
        ScriptDirectory.from_config(alembic_config(url)).get_revision(revision)
    except CommandError:
        raise StorageError(f"{safe_url(url)} has schema revision {revision}, which this nt8bridge does not know: it "
                           "was written by a newer nt8bridge; upgrade nt8bridge, or use another database") from None
    if revision != head:
        return f"{safe_url(url)} is reachable, schema at {revision}; the sidecar upgrades it to {head} at start"
    return f"{safe_url(url)} is reachable, schema at {revision} (the latest)"


# --------------------------------------------------------------------------- backups


def backup(url: str, dest: Path) -> Path:
    """Copy the database to a file, consistently, while the writer keeps running.

    SQLite uses the sqlite3 online backup API in a single step: the copy is a snapshot of one
    moment, and in WAL mode the writer is not blocked meanwhile. The copy is switched to the
    rollback journal so it is one self-contained file. PostgreSQL runs ``pg_dump -Fc`` (restore
    with ``pg_restore``); the password goes through the environment, not the command line.

    Parameters
    ----------
    url
        Database URL.
    dest
        Target file, or an existing folder (a time-stamped file name is chosen inside it).
        The file appears only once complete.

    Returns
    -------
    Path
        The backup file written.

    Raises
    ------
    StorageError
        If the source cannot be read, the target cannot be written, or ``pg_dump`` is missing.
    """
    parsed = parse_url(url)
    dest = Path(dest)
    is_sqlite = parsed.get_backend_name() == "sqlite"
    if dest.is_dir():
        stamp = time.strftime("%Y%m%d-%H%M%S")
        stem = Path(str(parsed.database)).stem if is_sqlite else str(parsed.database or "nt8bridge")
        dest = dest / (f"{stem}-{stamp}.sqlite" if is_sqlite else f"{stem}-{stamp}.dump")
    partial = dest.with_name(dest.name + ".partial")
    try:
        if is_sqlite:
            _backup_sqlite(Path(str(parsed.database)), partial)
        else:
            _backup_postgres(parsed, partial)
        os.replace(partial, dest)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    log.info("backed up %s to %s", safe_url(parsed), dest)
    return dest


def _backup_sqlite(source: Path, target: Path) -> None:
    if not source.is_file():
        raise StorageError(f"cannot back up {source}: the file does not exist")
    target.unlink(missing_ok=True)
    try:
        src = sqlite3.connect(source, timeout=SQLITE_BUSY_TIMEOUT_S)
        try:
            dst = sqlite3.connect(target)
            try:
                src.backup(dst)  # all pages in one step: one consistent snapshot
                dst.execute("PRAGMA journal_mode = DELETE")
            finally:
                dst.close()
        finally:
            src.close()
    except sqlite3.Error as exc:
        raise as_storage_error(f"sqlite:///{source}", exc, f"backing up to {target}") from exc


def _backup_postgres(url: URL, target: Path) -> None:
    pg_dump = shutil.which("pg_dump")
    if pg_dump is None:
        raise StorageError(
            "cannot back up PostgreSQL: pg_dump is not on PATH. Install the PostgreSQL client tools "
            "(Debian/Ubuntu: apt install postgresql-client; Windows: the 'Command Line Tools' of the "
            "PostgreSQL installer, then add its bin folder to PATH), ideally the server's major version or newer"
        )
    env = dict(os.environ)
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    libpq_url = url.set(drivername="postgresql", password=None).render_as_string(hide_password=False)
    cmd = [pg_dump, "--format=custom", "--no-password", f"--file={target}", f"--dbname={libpq_url}"]
    try:
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise StorageError(f"cannot run {pg_dump}: {exc}") from exc
    if result.returncode != 0:
        detail = result.stderr.strip() or f"exit status {result.returncode}"
        raise StorageError(
            f"pg_dump failed for {safe_url(url)}: {detail}",
            transient="could not connect" in detail or "connection" in detail,
        )
