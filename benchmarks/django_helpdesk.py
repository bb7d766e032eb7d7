"""django-helpdesk on the same corpus: the peer a desk would otherwise install.

django-helpdesk (a Django app) turns mail into tickets with its `get_email` management
command, which can read a local directory (`Queue.email_box_type = "local"`). This module
installs it into a throwaway venv, builds the smallest Django project its documentation
asks for (SQLite, the contrib apps it needs, teams mode off), migrates once, and then for
each run starts from a copy of the migrated database, fills the queue's directory with
the corpus and times `get_email` as a subprocess — the same way the gateway's
`mailgateway import DIR` is timed, Python start-up included on both sides.

How it threads, read from `helpdesk/email.py` of 2.6: a mail is a follow-up when its
`In-Reply-To` equals the Message-ID stored on an earlier follow-up (only `In-Reply-To`,
not `References`), or else when the subject matches `.*\\[<queue-slug>-<ticket id>\\]`.
Every generated header-threaded reply carries `In-Reply-To`, so those thread as they
are; tag-threaded replies get the same corpus with django-helpdesk's own tag
(`[bench-<id>]`, see `peer_tag`), where ticket ids are 1, 2, … in creation order on the
fresh database, exactly as the gateway numbers its tickets.

Two things are adjusted so the comparison measures mail processing and nothing else:

* `get_email` lists the directory with `os.listdir`, whose order is arbitrary, so a
  reply could be read before the request it answers. The driver wraps `os.listdir` to
  return sorted names (the files are named in arrival order); the gateway's import gets
  the same order.
* Its notification mails go to Django's dummy e-mail backend (rendered, not sent); the
  gateway's outbox rows are likewise written and not dispatched during the import.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import venv
from dataclasses import dataclass
from pathlib import Path

from benchmarks.core import run_measured
from benchmarks.generate import write_directory

PIP_REQUIREMENT = "django-helpdesk>=2.6,<2.7"
QUEUE_SLUG = "bench"
_VENV_MARKER = ".venv-ready"
_SITE_MARKER = ".site-ready"


def peer_tag(ordinal: int) -> str:
    """django-helpdesk's subject tag for the ticket with id `ordinal`: `[bench-N]`."""
    return f"[{QUEUE_SLUG}-{ordinal}]"


@dataclass(frozen=True)
class PeerResult:
    """One `get_email` run.

    `tickets` is how many tickets it opened; `followups` counts the follow-ups it added to
    existing tickets (django-helpdesk also stores each ticket's first mail as a follow-up;
    those are not counted), so on a well-threaded corpus `followups` equals the replies.
    `left_over` is the number of files it left in the directory (not processed).
    """

    seconds: float
    mails: int
    tickets: int
    followups: int
    peak_rss_kib: int = 0
    cpu_seconds: float = 0.0
    left_over: int = 0
    version: str = ""
    work_seconds: float = 0.0  # `get_email` itself, Django's start-up excluded

    @property
    def mails_per_second(self) -> float:
        """Throughput of the whole command, start-up included."""
        return self.mails / self.seconds if self.seconds else 0.0

    @property
    def work_mails_per_second(self) -> float:
        """Throughput of `get_email` itself."""
        return self.mails / self.work_seconds if self.work_seconds else 0.0


def _reported_seconds(stdout: str) -> float:
    """The time the driver measured around `get_email` (0 when it did not say)."""
    found = re.findall(r"^BENCH-SECONDS ([0-9.]+)$", stdout, re.MULTILINE)
    return float(found[-1]) if found else 0.0


class DjangoHelpdesk:
    """A django-helpdesk installation under `workdir`, reused across runs.

    `workdir/venv` holds the venv, `workdir/site` the project and a migrated template
    database; each run gets its own directory under `workdir/runs`, removed afterwards.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir.resolve()
        self.venv = self.workdir / "venv"
        self.site = self.workdir / "site"
        self.python = self.venv / "bin" / "python"
        self._runs = 0

    def install(self) -> str:
        """Create the venv and install django-helpdesk, then build the project; return
        the installed version.

        Each step is skipped when a previous run completed it (its marker is written
        last); the project is rebuilt when this module's project files changed.
        """
        venv_marker = self.workdir / _VENV_MARKER
        site_marker = self.workdir / _SITE_MARKER
        if not venv_marker.exists():
            shutil.rmtree(self.venv, ignore_errors=True)
            self.workdir.mkdir(parents=True, exist_ok=True)
            venv.EnvBuilder(with_pip=True, clear=True).create(self.venv)
            pip: list[str | os.PathLike[str]] = [self.python, "-m", "pip", "install", "-q"]
            run_measured([*pip, "--disable-pip-version-check", PIP_REQUIREMENT]).check(
                f"pip install {PIP_REQUIREMENT!r}"
            )
            venv_marker.write_text("ok\n", encoding="utf-8")
        fingerprint = hashlib.sha256((_SETTINGS + _URLS + _DRIVER).encode()).hexdigest()[:16]
        if site_marker.exists():
            version, _, built = site_marker.read_text(encoding="utf-8").partition(" ")
            if built.strip() == fingerprint:
                return version
        shutil.rmtree(self.site, ignore_errors=True)
        self.site.mkdir(parents=True)
        (self.site / "bench_settings.py").write_text(_SETTINGS, encoding="utf-8")
        (self.site / "bench_urls.py").write_text(_URLS, encoding="utf-8")
        (self.site / "driver.py").write_text(_DRIVER, encoding="utf-8")
        template = self.site / "template"
        template.mkdir()
        env = self._env(template / "db.sqlite3", template / "mail", template / "media")
        self._driver("setup", env)
        version = self._driver("version", env).strip()
        site_marker.write_text(f"{version} {fingerprint}\n", encoding="utf-8")
        return version

    def run(self, mails: list[bytes]) -> PeerResult:
        """Process `mails` with `get_email` on a fresh copy of the database; time it."""
        version = self.install()
        self._runs += 1
        run_dir = self.workdir / "runs" / f"{os.getpid()}-{self._runs}"
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        database = run_dir / "db.sqlite3"
        shutil.copyfile(self.site / "template" / "db.sqlite3", database)
        mail_dir = run_dir / "mail"
        write_directory(mails, mail_dir)
        env = self._env(database, mail_dir, run_dir / "media")
        measured = run_measured(
            [self.python, self.site / "driver.py", "get_email"], env=env, cwd=self.site
        ).check("django-helpdesk get_email")
        counts = json.loads(self._driver("count", env))
        left_over = sum(1 for _ in mail_dir.iterdir())
        shutil.rmtree(run_dir, ignore_errors=True)
        return PeerResult(
            seconds=measured.seconds,
            mails=len(mails),
            tickets=counts["tickets"],
            followups=counts["followups"] - counts["tickets"],
            peak_rss_kib=measured.peak_rss_kib,
            cpu_seconds=measured.cpu_seconds,
            left_over=left_over,
            version=version,
            work_seconds=_reported_seconds(measured.stdout),
        )

    def _env(self, database: Path, mail_dir: Path, media: Path) -> dict[str, str]:
        """Environment for the driver: which database, mail directory and media root."""
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("PYTHON", "DJANGO", "VIRTUAL_ENV"))
        }
        env.update(
            DJANGO_SETTINGS_MODULE="bench_settings",
            PYTHONPATH=str(self.site),
            PYTHONUTF8="1",
            BENCH_DATABASE=str(database),
            BENCH_MAIL_DIR=str(mail_dir),
            BENCH_MEDIA_ROOT=str(media),
        )
        return env

    def _driver(self, command: str, env: dict[str, str]) -> str:
        """Run one driver command and return its stdout."""
        measured = run_measured(
            [self.python, self.site / "driver.py", command], env=env, cwd=self.site
        )
        return measured.check(f"django-helpdesk driver {command}").stdout


def run_django_helpdesk(mails: list[bytes], workdir: Path) -> PeerResult:
    """Install django-helpdesk under `workdir` (or reuse it) and process `mails` once."""
    return DjangoHelpdesk(workdir).run(mails)


# The project files below run inside the peer's venv, never in this process.

_SETTINGS = '''\
"""Smallest Django project django-helpdesk 2.6 runs in, configured by environment."""
import os

BASE_DIR = os.path.dirname(os.path.abspath(__file__))
SECRET_KEY = "benchmark-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["localhost"]
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.sites",
    "django.contrib.messages",
    "django.contrib.admin",
    "django.contrib.humanize",
    "rest_framework",
    "helpdesk",
]
MIDDLEWARE = []
ROOT_URLCONF = "bench_urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ["BENCH_DATABASE"],
    }
}
SITE_ID = 1
USE_TZ = True
TIME_ZONE = "Europe/Rome"
LANGUAGE_CODE = "it"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
MEDIA_ROOT = os.environ["BENCH_MEDIA_ROOT"]
EMAIL_BACKEND = "django.core.mail.backends.dummy.EmailBackend"
DEFAULT_FROM_EMAIL = "assistenza@example.com"
HELPDESK_TEAMS_MODE_ENABLED = False
LOGGING = {"version": 1, "disable_existing_loggers": False,
           "root": {"handlers": [], "level": "ERROR"}}
'''

_URLS = '''\
"""URLs django-helpdesk reverses while rendering its notification mails."""
from django.urls import include, path

urlpatterns = [path("helpdesk/", include("helpdesk.urls"))]
'''

_DRIVER = '''\
"""setup | get_email | count | version, for the benchmark; paths come from the environment."""
import hashlib
import json
import os
import sys
import time

import django

django.setup()

from django.core.management import call_command  # noqa: E402


def setup():
    from helpdesk.models import Queue

    call_command("migrate", verbosity=0, interactive=False)
    Queue.objects.create(
        title="Assistenza",
        slug="bench",
        email_address="assistenza@example.com",
        allow_email_submission=True,
        email_box_type="local",
        email_box_local_dir=os.environ["BENCH_MAIL_DIR"],
        email_box_interval=0,
        logging_type="none",
    )


def get_email():
    from helpdesk.models import Queue

    Queue.objects.filter(slug="bench").update(
        email_box_local_dir=os.environ["BENCH_MAIL_DIR"], email_box_last_check=None
    )
    unsorted_listdir = os.listdir

    def listdir_in_arrival_order(path="."):
        return sorted(unsorted_listdir(path))

    os.listdir = listdir_in_arrival_order
    started = time.perf_counter()
    call_command("get_email", quiet=True)
    print(f"BENCH-SECONDS {time.perf_counter() - started:.6f}")


def count():
    from helpdesk.models import FollowUp, Ticket

    print(json.dumps({"tickets": Ticket.objects.count(),
                      "followups": FollowUp.objects.count()}))


def version():
    from importlib.metadata import version as installed

    print(installed("django-helpdesk"))


{"setup": setup, "get_email": get_email, "count": count, "version": version}[sys.argv[1]]()
'''
