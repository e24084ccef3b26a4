"""A throwaway PostgreSQL cluster for the tests: ``initdb`` + ``pg_ctl`` in a temporary directory.

The installed server binaries are used (``$FACEMATCH_PG_BIN``, else the newest
``/usr/lib/postgresql/*/bin``, else ``pg_config --bindir``, else ``initdb`` on ``PATH``).
PostgreSQL refuses to run as root: under root the cluster runs as an unprivileged user
(``$FACEMATCH_PG_USER``, else ``postgres``, else ``fmpg``; ``.ci/run`` creates ``fmpg`` when
neither exists). The server listens on 127.0.0.1 on a free port and on a unix socket in
its directory; password (scram-sha-256) authentication over TCP, so the tests use
credentials the way a deployment does.

``FACEMATCH_REQUIRE_POSTGRES=1`` (set by ``.ci/run``) turns "cannot start PostgreSQL"
from a skip into a failure.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from _server_util import free_port

SUPERUSER = "facematch"
PASSWORD = "pg-test-" + uuid.uuid4().hex[:12]
REQUIRE_ENV = "FACEMATCH_REQUIRE_POSTGRES"


class PgUnavailable(RuntimeError):
    """PostgreSQL cannot be started here (the reason says why)."""


def find_bindir() -> Path:
    env = os.environ.get("FACEMATCH_PG_BIN")
    if env:
        if not (Path(env) / "initdb").is_file():
            raise PgUnavailable(f"FACEMATCH_PG_BIN={env} has no initdb")
        return Path(env)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False).stdout.strip()
        if out and (Path(out) / "initdb").is_file():
            return Path(out)
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise PgUnavailable("no PostgreSQL server binaries (initdb) found: apt-get install postgresql")


def run_as_user() -> str | None:
    """The unprivileged user to run the server as (None when not root)."""
    if os.geteuid() != 0:
        return None
    for name in (os.environ.get("FACEMATCH_PG_USER"), "postgres", "fmpg"):
        if not name:
            continue
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise PgUnavailable("running as root and no unprivileged user for PostgreSQL (useradd -r -m fmpg)")


class PgCluster:
    """One PostgreSQL server in a temporary directory (``start``/``stop``/``restart``, ``uri(db)``)."""

    def __init__(self) -> None:
        self.bindir = find_bindir()
        self.user = run_as_user()
        self.dir = Path(tempfile.mkdtemp(prefix="facematch-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.port = free_port()
        if self.user is not None:
            info = pwd.getpwnam(self.user)
            os.chown(self.dir, info.pw_uid, info.pw_gid)
        self.dir.chmod(0o755)
        pwfile = self.dir / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self.user is not None:
            os.chown(pwfile, pwd.getpwnam(self.user).pw_uid, -1)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            f"--pwfile={pwfile}",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        )
        pwfile.unlink()
        self._databases = 0

    def _run(self, tool: str, *args: str, timeout: float = 120.0) -> str:
        cmd = [str(self.bindir / tool), *args]
        if self.user is not None:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, cwd=self.dir)
        if res.returncode != 0:
            raise PgUnavailable(f"{tool} failed ({res.returncode}): {(res.stderr or res.stdout).strip()[-2000:]}")
        return res.stdout

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").is_file()

    def start(self) -> PgCluster:
        opts = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} -c max_connections=200"
        try:
            self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", opts, "start")
        except PgUnavailable as exc:
            raise PgUnavailable(f"{exc}\n{self.server_log()[-2000:]}") from None
        return self

    def stop(self, mode: str = "fast") -> None:
        if self.running:
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def server_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def uri(self, database: str = "postgres", *, password: bool = True) -> str:
        cred = f"{SUPERUSER}:{PASSWORD}" if password else SUPERUSER
        return f"postgresql://{cred}@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser over the unix socket (trust), returning unaligned output."""
        cmd = [str(self.bindir / "psql"), "-h", str(self.dir), "-p", str(self.port), "-U", SUPERUSER]
        cmd += ["-d", database, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql]
        if self.user is not None:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False, cwd=self.dir)
        if res.returncode != 0:
            raise RuntimeError(f"psql failed: {res.stderr.strip()}")
        return res.stdout.strip()

    def new_database(self, prefix: str = "t") -> str:
        """A fresh, empty database; returns its name."""
        self._databases += 1
        name = f"{prefix}_{os.getpid()}_{self._databases}_{uuid.uuid4().hex[:6]}"
        self.psql(f'CREATE DATABASE "{name}"')
        return name

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.psql("SELECT 1")
                return
            except RuntimeError:
                time.sleep(0.2)
        raise PgUnavailable("PostgreSQL did not accept connections")


def cluster_or_skip() -> PgCluster:
    """A started cluster, or the test skips (fails under ``FACEMATCH_REQUIRE_POSTGRES=1``) with the reason."""
    import pytest

    try:
        return start_cluster()
    except PgUnavailable as exc:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"PostgreSQL is required here ({REQUIRE_ENV}=1) but cannot be started: {exc}")
        pytest.skip(f"PostgreSQL cannot be started: {exc}")


def start_cluster() -> PgCluster:
    """A started cluster, or ``PgUnavailable`` with the reason."""
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError as exc:
        raise PgUnavailable(f"psycopg 3 is not installed (pip install 'facematch[postgres]'): {exc}") from None
    cluster = PgCluster()
    try:
        return cluster.start()
    except BaseException:
        cluster.destroy()
        raise


__all__ = [
    "PASSWORD",
    "REQUIRE_ENV",
    "SUPERUSER",
    "PgCluster",
    "PgUnavailable",
    "cluster_or_skip",
    "find_bindir",
    "start_cluster",
]
