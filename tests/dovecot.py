"""A throw-away Dovecot IMAP server on a loopback port, for tests and benchmarks.

The IMAP poller is tested against a real server because the behaviour that
matters (IDLE notifications, MOVE, UIDVALIDITY, a connection kicked by the
server) is exactly what a mock would get wrong. Each instance writes its own
configuration, users file and Maildir storage under a private directory, so
it never touches the system's Dovecot and several can run side by side.

Dovecot refuses to deliver mail as root, so mail and login processes run as an
unprivileged system user (`mgtest`, created when missing and we are root).
"""

from __future__ import annotations

import atexit
import contextlib
import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from imapclient import IMAPClient

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
DOVEADM = shutil.which("doveadm") or "/usr/bin/doveadm"
MAIL_USER = "mgtest"
REQUIRE_ENV = "MAILGATEWAY_REQUIRE_SERVERS"
_EX_NOUSER = 68  # doveadm kick: no session matched
T = TypeVar("T")

# What Dovecot 2.3 advertises after login, minus MOVE and IDLE: the variants a
# test builds from this exercise the COPY/EXPUNGE and polling code paths.
BASE_CAPABILITIES = (
    "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE SORT SORT=DISPLAY THREAD=REFERENCES "
    "THREAD=REFS THREAD=ORDEREDSUBJECT MULTIAPPEND URL-PARTIAL CATENATE UNSELECT "
    "CHILDREN NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 CONDSTORE QRESYNC ESEARCH "
    "ESORT SEARCHRES WITHIN CONTEXT=SEARCH LIST-STATUS BINARY SPECIAL-USE LITERAL+"
)


def dovecot_available() -> bool:
    """True when the Dovecot binaries exist and we can run them as a mail user."""
    return Path(DOVECOT).exists() and Path(DOVEADM).exists() and _mail_user() is not None


def _mail_user() -> str | None:
    """The unprivileged user mail processes run as; created on demand when we are root."""
    for name in (MAIL_USER,):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    if os.geteuid() != 0 or not shutil.which("useradd"):
        return None
    result = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", MAIL_USER],
        capture_output=True,
        check=False,
    )
    if result.returncode not in (0, 9):  # 9: the user appeared meanwhile
        return None
    return MAIL_USER


def _close(client: IMAPClient) -> None:
    """Log out, or at least close the socket when the session is already gone."""
    try:
        client.logout()
    except Exception:
        with contextlib.suppress(Exception):
            client.shutdown()


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Dovecot:
    """One Dovecot instance: `start()`, use `port`/`username`/`password`, `stop()`.

    `capabilities`, when given, replaces what the server advertises after login
    (e.g. `BASE_CAPABILITIES + " IDLE"` for a server without MOVE). `tls`
    adds an implicit-TLS listener (`tls_port`) and STARTTLS on the plain one,
    with a self-signed certificate at `cert_path` for clients to trust.
    """

    username: str = "assistenza@example.com"
    password: str = "s3cret-imap"
    capabilities: str | None = None
    tls: bool = False
    # Dovecot's default (2 s) slows every test of a refused login; 0 unless a test wants it.
    auth_failure_delay: str = "0"
    port: int = 0
    tls_port: int = 0
    root: Path = field(init=False)
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _client: IMAPClient | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="mg-dovecot-"))

    # ---- life cycle -------------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        return self.root / "dovecot.log"

    @property
    def config_path(self) -> Path:
        return self.root / "dovecot.conf"

    @property
    def cert_path(self) -> Path:
        return self.root / "cert.pem"

    def start(self, timeout: float = 10.0) -> None:
        """Write the configuration and run Dovecot in the foreground until it accepts logins."""
        user = _mail_user()
        if user is None:
            raise RuntimeError("no unprivileged user to run Dovecot's mail processes as")
        self.port = self.port or free_port()
        if self.tls:
            self.tls_port = self.tls_port or free_port()
            self._make_certificate()
        self._write_config(user)
        with self.log_path.open("ab") as errors:
            self._process = subprocess.Popen(
                [DOVECOT, "-F", "-c", str(self.config_path)],
                stdout=subprocess.DEVNULL,
                stderr=errors,
                start_new_session=True,
            )
        # A test run that dies without calling stop() must not leave a server behind.
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"Dovecot exited at start; see {self.log_path}:\n{self.log()}")
            try:
                with self.connect() as client:
                    client.noop()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"Dovecot did not start; see {self.log_path}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Stop the server and remove everything it wrote."""
        self.close_client()
        if self._process is not None:
            # The data is thrown away anyway: kill the whole process group at once
            # instead of waiting a second for Dovecot's graceful shutdown.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait(timeout=10)
            self._process = None
            atexit.unregister(self.stop)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Dovecot:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def log(self) -> str:
        """What Dovecot logged so far (for assertion messages)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # ---- administration ---------------------------------------------------------------

    def doveadm(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run one doveadm command against this instance."""
        return subprocess.run(
            [DOVEADM, "-c", str(self.config_path), *args],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )

    def kick(self, user: str | None = None) -> bool:
        """Disconnect every IMAP session of `user` (default: the test user), as an admin would.

        Returns False when the user had no session to kick.
        """
        result = subprocess.run(
            [DOVEADM, "-c", str(self.config_path), "kick", user or self.username],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        if result.returncode == _EX_NOUSER:
            return False
        if result.returncode != 0:
            raise RuntimeError(f"doveadm kick failed: {result.stderr.strip()}")
        return True

    def sessions(self, user: str | None = None) -> int:
        """How many IMAP sessions `user` (default: the test user) has open right now."""
        who = self.doveadm("who", "-1", user or self.username).stdout
        return sum(
            1 for line in who.splitlines() if line.strip() and not line.startswith("username")
        )

    def wait_disconnected(self, user: str | None = None, timeout: float = 10.0) -> None:
        """Return once `user` has no session left (a kick takes effect asynchronously)."""
        deadline = time.monotonic() + timeout
        while self.sessions(user):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{user or self.username} still has IMAP sessions")
            time.sleep(0.02)

    def connect(self) -> IMAPClient:
        """A new logged-in client on the plain listener."""
        client = IMAPClient("127.0.0.1", port=self.port, ssl=False, timeout=10)
        try:
            client.login(self.username, self.password)
        except BaseException:
            with contextlib.suppress(Exception):
                client.shutdown()
            raise
        return client

    @contextlib.contextmanager
    def client(self) -> Iterator[IMAPClient]:
        """A short-lived logged-in client, logged out afterwards."""
        client = self.connect()
        try:
            yield client
        finally:
            _close(client)

    def _shared_client(self) -> IMAPClient:
        """One long-lived client for appends, so bulk appends do not log in each time."""
        if self._client is None:
            self._client = self.connect()
        return self._client

    def close_client(self) -> None:
        if self._client is not None:
            _close(self._client)
            self._client = None

    def append(self, folder: str, raw: bytes) -> None:
        """Deliver one message into `folder` (created when missing)."""
        self.append_many(folder, [raw])

    def append_many(self, folder: str, raws: Iterable[bytes]) -> None:
        """Deliver several messages into `folder` over one connection."""
        for attempt in (1, 2):
            client = self._shared_client()
            try:
                if not client.folder_exists(folder):
                    client.create_folder(folder)
                for raw in raws:
                    client.append(folder, raw)
                return
            except (OSError, IMAPClient.AbortError):
                # A kick aimed at the poller also drops this connection: log in again.
                _close(client)
                self._client = None
                if attempt == 2:
                    raise

    def _read(self, query: Callable[[IMAPClient], T]) -> T:
        """Run a read-only `query` on a fresh session; once more if a kick cut it."""
        for attempt in (1, 2):
            try:
                with self.client() as client:
                    return query(client)
            except (OSError, IMAPClient.AbortError):
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def uids(self, folder: str) -> list[int]:
        """The UIDs of the (not deleted) messages in `folder`; empty when it does not exist."""

        def query(client: IMAPClient) -> list[int]:
            if not client.folder_exists(folder):
                return []
            client.select_folder(folder, readonly=True)
            return sorted(client.search("UNDELETED"))

        return self._read(query)

    def count(self, folder: str) -> int:
        return len(self.uids(folder))

    def folders(self) -> list[str]:
        return self._read(lambda c: sorted(name for _flags, _sep, name in c.list_folders()))

    def uidvalidity(self, folder: str) -> int:
        return self._read(lambda c: int(c.folder_status(folder, [b"UIDVALIDITY"])[b"UIDVALIDITY"]))

    def recreate(self, folder: str) -> None:
        """Delete and create `folder` again: its UIDVALIDITY changes and UIDs restart at 1."""
        with self.client() as client:
            if client.folder_exists(folder):
                client.delete_folder(folder)
            client.create_folder(folder)

    # ---- files ------------------------------------------------------------------------

    def _make_certificate(self) -> None:
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=DNS:localhost,IP:127.0.0.1",
                "-keyout",
                str(self.root / "key.pem"),
                "-out",
                str(self.cert_path),
            ],
            capture_output=True,
            check=True,
        )

    def _write_config(self, user: str) -> None:
        info = pwd.getpwnam(user)
        group = grp.getgrgid(info.pw_gid).gr_name
        mail = self.root / "mail"
        for path in (self.root / "run", self.root / "state", mail):
            path.mkdir(exist_ok=True)
        # Mail processes run as `user`: they must reach and own the storage.
        os.chmod(self.root, 0o755)
        os.chown(mail, info.pw_uid, info.pw_gid)
        (self.root / "users").write_text(f"{self.username}:{{PLAIN}}{self.password}\n")
        self.config_path.write_text(self._config_text(user, group))

    def _config_text(self, user: str, group: str) -> str:
        root = self.root
        ssl_lines: Sequence[str]
        if self.tls:
            ssl_lines = (
                "ssl = yes",
                f"ssl_cert = <{root}/cert.pem",
                f"ssl_key = <{root}/key.pem",
            )
        else:
            ssl_lines = ("ssl = no",)
        capability = f"  imap_capability = {self.capabilities}" if self.capabilities else ""
        imaps = (
            f"  inet_listener imaps {{\n    address = 127.0.0.1\n    port = {self.tls_port}\n"
            "    ssl = yes\n  }"
            if self.tls
            else "  inet_listener imaps {\n    port = 0\n  }"
        )
        return "\n".join(
            [
                "protocols = imap",
                "listen = 127.0.0.1",
                f"base_dir = {root}/run",
                f"state_dir = {root}/state",
                f"log_path = {root}/dovecot.log",
                f"info_log_path = {root}/dovecot.log",
                *ssl_lines,
                "disable_plaintext_auth = no",
                "auth_mechanisms = plain login",
                f"auth_failure_delay = {self.auth_failure_delay}",
                f"default_internal_user = {user}",
                f"default_internal_group = {group}",
                f"default_login_user = {user}",
                f"mail_uid = {user}",
                f"mail_gid = {group}",
                "first_valid_uid = 1",
                "mail_location = maildir:~/Maildir",
                "mail_max_userip_connections = 200",
                "passdb {",
                "  driver = passwd-file",
                f"  args = scheme=PLAIN username_format=%u {root}/users",
                "}",
                "userdb {",
                "  driver = static",
                f"  args = uid={user} gid={group} home={root}/mail/%u",
                "}",
                "service imap-login {",
                "  chroot =",
                "  inet_listener imap {",
                "    address = 127.0.0.1",
                f"    port = {self.port}",
                "  }",
                imaps,
                "}",
                "service anvil {",
                "  chroot =",
                # No growing penalty for the tests' own repeated failed logins.
                "  unix_listener anvil-auth-penalty {",
                "    mode = 0",
                "  }",
                "}",
                "protocol imap {",
                capability,
                "}",
                "",
            ]
        )
