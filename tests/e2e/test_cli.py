"""The command-line contract scripts rely on (SPEC "Command line")."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from mailgateway.cli import main
from tests.conftest import scratch_postgres, skip_or_fail, write_toml
from tests.mails import CUSTOMER, PERSON, build_mail, staff_reply_address


def run(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> tuple[int, str, str]:
    code = main(["--config", str(config), *args])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> Any:
    code, out, err = run(capsys, config, *args, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.fixture
def desk(config_file: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    assert run(capsys, config_file, "db", "upgrade")[0] == 0
    assert (
        run(
            capsys,
            config_file,
            "accounts",
            "add",
            "--name",
            "Studio Rossi",
            "--email",
            CUSTOMER,
            "--vat",
            "01234567890",
        )[0]
        == 0
    )
    assert (
        run(
            capsys,
            config_file,
            "persons",
            "add",
            "--account",
            CUSTOMER,
            "--name",
            "Anna Bianchi",
            "--email",
            PERSON,
        )[0]
        == 0
    )
    assert (
        run(
            capsys,
            config_file,
            "staff",
            "add",
            "--name",
            "Luca Verdi",
            "--email",
            "luca@example.com",
            "--group",
            "tecnica",
        )[0]
        == 0
    )
    return config_file


def test_console_script_runs_as_a_process(desk: Path, tmp_path: Path) -> None:
    mail = tmp_path / "request.eml"
    mail.write_bytes(build_mail(subject="Città: è già bloccato"))
    ingest = subprocess.run(
        [sys.executable, "-m", "mailgateway", "--config", str(desk), "ingest", str(mail)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ingest.returncode == 0, ingest.stderr
    listing = subprocess.run(
        [sys.executable, "-m", "mailgateway", "--config", str(desk), "tickets", "list", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    [ticket] = json.loads(listing.stdout)
    assert ticket["subject"] == "Città: è già bloccato"
    assert set(ticket) >= {
        "number",
        "tag",
        "status",
        "subject",
        "account",
        "person",
        "created_at",
        "updated_at",
    }


def test_ingest_from_stdin_and_show(
    desk: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    raw = build_mail(attachments=[("a.pdf", b"%PDF", "application/pdf")])
    mail = tmp_path / "m.eml"
    mail.write_bytes(raw)
    with mail.open("rb") as stream:
        monkeypatch.setattr(sys, "stdin", type("S", (), {"buffer": stream})())
        assert run(capsys, desk, "ingest", "-")[0] == 0
    data = run_json(capsys, desk, "tickets", "show", "2026-000001")
    expected = {
        "number",
        "tag",
        "status",
        "subject",
        "product",
        "request_type",
        "impact",
        "account",
        "person",
        "assignee",
        "created_at",
        "due_at",
        "rules",
        "messages",
        "events",
    }
    assert expected <= set(data)
    [message] = data["messages"]
    assert {"direction", "author", "body", "internal", "attachments", "refused_attachments"} <= set(
        message
    )
    assert message["refused_attachments"] == ["a.pdf"]
    assert data["person"] == PERSON and data["account"] == CUSTOMER


def test_inbox_list_shows_every_fate(
    desk: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for name, raw in {
        "ok": build_mail(),
        "stranger": build_mail(sender="x@unknown.test"),
        "ooo": build_mail(
            subject="Risposta automatica: fuori ufficio", headers={"Auto-Submitted": "auto-replied"}
        ),
    }.items():
        (tmp_path / f"{name}.eml").write_bytes(raw)
        assert run(capsys, desk, "ingest", str(tmp_path / f"{name}.eml"))[0] == 0
    rows = run_json(capsys, desk, "inbox", "list")
    assert [r["status"] for r in rows] == ["processed", "ignored", "ignored"]
    assert rows[0]["ticket"] == "2026-000001"
    assert "unknown sender" in rows[1]["reason"]
    assert "auto" in rows[2]["reason"].lower()
    assert run_json(capsys, desk, "inbox", "list", "--status", "ignored")[0]["id"] == 2


def test_listings_take_json(desk: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_json(capsys, desk, "accounts", "list")[0]["email"] == CUSTOMER
    assert run_json(capsys, desk, "persons", "list")[0]["account"] == CUSTOMER
    assert run_json(capsys, desk, "staff", "list")[0]["group"] == "tecnica"
    assert run_json(capsys, desk, "tickets", "list", "--status", "aperto") == []


def test_accounts_import_csv(
    desk: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    csv_file = tmp_path / "accounts.csv"
    csv_file.write_text(
        "name,email,vat,language\nStudio Bianchi,info@bianchi.it,IT 12345678901,en\n"
        "Doppio,rossi@studiorossi.it,1,\nRotto,non-un-indirizzo,,\n"
        "IVA corta,corta@verdi.it,123,\nVirgole,a@b.it,,it,troppo,\n"
    )
    code, out, err = run(capsys, desk, "accounts", "import", str(csv_file))
    assert code == 0 and out.strip() == "1 accounts added, 4 skipped."
    assert "line 3" in err and "line 4" in err
    assert "line 5: '123' is not an Italian VAT number" in err
    assert "line 6: 6 fields where the header has 4; not read" in err
    [bianchi] = [a for a in run_json(capsys, desk, "accounts", "list")
                 if a["email"] == "info@bianchi.it"]
    assert bianchi["vat"] == "12345678901"
    csv_file.write_bytes("name,email\nCittà,c@x.it\n".encode("latin-1"))
    code, _, err = run(capsys, desk, "accounts", "import", str(csv_file))
    assert code == 1 and "is not UTF-8 text" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "args, message",
    [
        (("tickets", "show", "2026-999999"), "There is no ticket 2026-999999."),
        (("ingest", "/no/such/file.eml"), "File /no/such/file.eml does not exist."),
        (
            ("accounts", "add", "--name", "X", "--email", "not-an-address"),
            "'not-an-address' is not an e-mail address.",
        ),
        (
            ("persons", "add", "--account", "nobody@x.it", "--name", "N", "--email", "n@x.it"),
            "There is no account with main address nobody@x.it.",
        ),
        (("inbox", "retry", "42"), "There is no received mail with ID 42."),
        (("inbox", "show", "42"), "There is no received mail with ID 42."),
        (
            ("accounts", "add", "--name", "X", "--email", "x@verdi.it", "--vat", "IT123"),
            "'IT123' is not an Italian VAT number (partita IVA): 11 digits, optionally after IT.",
        ),
        (("tickets", "show", "7"), "There is no ticket 7."),
    ],
)
def test_user_mistakes_are_one_sentence(
    desk: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], message: str
) -> None:
    code, _, err = run(capsys, desk, *args)
    assert code != 0
    assert err.strip() == f"mailgateway: {message}"
    assert "Traceback" not in err


def test_bad_configuration_names_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[smtp]\nport = "twenty-five"\n')
    code, _, err = run(capsys, config, "tickets", "list")
    assert code == 2
    assert "smtp.port must be an integer" in err
    config.write_text('[helpdesk]\nunknown_sender = "maybe"\n')
    assert (
        "helpdesk.unknown_sender must be one of reject, accept"
        in run(capsys, config, "tickets", "list")[2]
    )
    config.write_text("[smpt]\n")
    assert "Unknown section [smpt]" in run(capsys, config, "tickets", "list")[2]


def test_ingest_exits_75_when_it_cannot_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        '[database]\nurl = "postgresql+psycopg://postgres@127.0.0.1:9/none"\n'
        f'[helpdesk]\ndata_dir = "{tmp_path}/var"\n'
    )
    mail = tmp_path / "m.eml"
    mail.write_bytes(build_mail())
    code, _, err = run(capsys, config, "ingest", str(mail))
    assert code == 75, err
    assert "try again later" in err


NOW = "2026-03-02T09:30:00+00:00"  # 10:30 in Rome


def _ticket_with_files(desk: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A ticket, the customer's reply with two files of one name and one other, and a
    technician's answer, all at NOW."""
    request = tmp_path / "request.eml"
    request.write_bytes(build_mail(subject="Stampa F24"))
    assert run(capsys, desk, "--now", NOW, "ingest", str(request))[0] == 0
    reply = tmp_path / "reply.eml"
    reply.write_bytes(build_mail(
        subject="Re: [Ticket#2026-000001] Stampa F24", body="Ecco i file.",
        attachments=[("errore.png", b"first", "image/png"), ("log.txt", b"righe", "text/plain"),
                     ("errore.png", b"second", "image/png")]))
    assert run(capsys, desk, "--now", NOW, "ingest", str(reply))[0] == 0
    answer = tmp_path / "answer.eml"
    answer.write_bytes(build_mail(
        sender="luca@example.com", subject="Re: [Ticket#2026-000001] Stampa F24",
        to=[staff_reply_address("2026-000001")], body="#prendi\nProvi ora."))
    assert run(capsys, desk, "--now", NOW, "ingest", str(answer))[0] == 0


def test_tickets_show_reads_as_the_desk_does(
    desk: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _ticket_with_files(desk, capsys, tmp_path)
    code, out, err = run(capsys, desk, "--now", NOW, "tickets", "show", "1")
    assert code == 0, err
    assert out.startswith("[Ticket#2026-000001] Stampa F24\n")
    assert "assignee: luca@example.com  group: tecnica" in out
    # Dates in the desk's time zone: 09:30 UTC is 10:30 in Rome.
    assert "created: 2026-03-02 10:30" in out and "(Europe/Rome)" in out
    assert "events:" in out and "IN_GESTIONE → RISPOSTO" in out
    assert "[file] log.txt 5 bytes" in out
    assert run(capsys, desk, "--now", NOW, "tickets", "show", "000001")[0] == 0
    code, _, err = run(capsys, desk, "tickets", "list", "--account", "nessuno@altrove.it")
    assert code == 1
    assert err.strip() == "mailgateway: There is no account with main address nessuno@altrove.it."


def test_tickets_attachment_exports_under_the_original_names(
    desk: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _ticket_with_files(desk, capsys, tmp_path)
    code, out, _ = run(capsys, desk, "--now", NOW, "tickets", "attachment", "1")
    assert code == 0 and out.splitlines() == ["errore.png\t5", "log.txt\t5", "errore.png\t6"]
    out_dir = tmp_path / "export"
    code, out, _ = run(capsys, desk, "--now", NOW, "tickets", "attachment", "1", "log.txt",
                       "--out", str(out_dir))
    assert code == 0 and out.strip() == str(out_dir / "log.txt")
    assert (out_dir / "log.txt").read_bytes() == b"righe"
    code, out, _ = run(capsys, desk, "--now", NOW, "tickets", "attachment", "1", "--all",
                       "--out", str(out_dir))
    assert code == 0
    # Nothing is overwritten: a second file of a taken name gets a number.
    assert (out_dir / "errore.png").read_bytes() == b"first"
    assert (out_dir / "errore (2).png").read_bytes() == b"second"
    assert (out_dir / "log (2).txt").read_bytes() == b"righe"
    code, _, err = run(capsys, desk, "--now", NOW, "tickets", "attachment", "1", "nulla.pdf")
    assert code == 1
    assert err.strip() == ("mailgateway: Ticket 2026-000001 has no file 'nulla.pdf' "
                           "(its files: errore.png, log.txt).")


def test_inbox_show_gives_one_mail_and_its_fate(
    desk: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    raw = build_mail(sender="x@unknown.test", subject="Chi sono?")
    (tmp_path / "m.eml").write_bytes(raw)
    assert run(capsys, desk, "ingest", str(tmp_path / "m.eml"))[0] == 0
    shown = run_json(capsys, desk, "inbox", "show", "1")
    assert shown["status"] == "ignored" and "unknown sender" in shown["reason"]
    assert shown["sender"] == "x@unknown.test" and shown["subject"] == "Chi sono?"
    code, out, _ = run(capsys, desk, "inbox", "show", "1")
    assert code == 0 and "status: ignored" in out
    shown_raw = subprocess.run(
        [sys.executable, "-m", "mailgateway", "--config", str(desk), "inbox", "show", "1",
         "--raw"], capture_output=True, timeout=60, check=True)
    assert shown_raw.stdout == raw


def needs_postgres_client_tools() -> None:
    if not (shutil.which("pg_dump") and shutil.which("pg_restore")):
        skip_or_fail("pg_dump and pg_restore are not installed (Debian: postgresql-client)")


def test_db_backup_taken_while_the_desk_writes_restores_its_tickets_and_files(
    desk: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path, config_data: dict[str, Any]
) -> None:
    _ticket_with_files(desk, capsys, tmp_path)
    shown = run(capsys, desk, "--now", NOW, "tickets", "show", "1")[1]
    url = config_data["database"]["url"]
    sqlite = url.startswith("sqlite")
    if not sqlite:
        needs_postgres_client_tools()
    # serve in the middle of a transaction: not in the copy, and not waited for
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    writer = engine.connect()
    writer.exec_driver_sql("BEGIN IMMEDIATE" if sqlite else "BEGIN")
    writer.exec_driver_sql("UPDATE tickets SET subject = 'non ancora' WHERE id = 1")
    backup = tmp_path / "backup"
    try:
        code, out, err = run(capsys, desk, "db", "backup", str(backup))
    finally:
        writer.exec_driver_sql("COMMIT")
        writer.close()
        engine.dispose()
    assert code == 0, err
    database, attachments, secret = out.splitlines()
    assert database.startswith("database: ")
    assert database.endswith(" bytes)" if sqlite else " bytes; restore it with pg_restore)")
    assert attachments == (f"attachments: 3 file(s), 16 bytes, copied to "
                           f"{backup / 'attachments'}")
    assert secret.startswith("secret: set in the configuration or MAILGATEWAY_SECRET, not "
                             "copied: keep it with this backup")
    code, _, err = run(capsys, desk, "db", "backup", str(backup))
    assert code == 1
    assert err.strip() == f"mailgateway: {backup} is not an empty folder: a backup never " \
        "overwrites another."

    # Restored as the README says, into a new data folder and a new database.
    restored = tmp_path / "restored"
    restored.mkdir()
    shutil.copytree(backup / "attachments", restored / "attachments")
    with contextlib.ExitStack() as stack:
        if sqlite:
            shutil.copy2(backup / "mailgateway.db", restored / "mailgateway.db")
            url = f"sqlite:///{restored / 'mailgateway.db'}"
        else:
            url = stack.enter_context(scratch_postgres(url))
            libpq = make_url(url).set(drivername="postgresql")
            subprocess.run(["pg_restore", "--clean", "--if-exists", "--no-owner", "-d",
                            libpq.render_as_string(hide_password=False),
                            str(backup / "mailgateway.dump")], check=True)
        config = write_toml({**config_data, "helpdesk": {**config_data["helpdesk"],
                                                         "data_dir": str(restored)},
                             "database": {"url": url}}, tmp_path / "restored.toml")
        assert run(capsys, config, "db", "upgrade")[0] == 0
        assert run(capsys, config, "--now", NOW, "tickets", "show", "1")[1] == shown
        exported = tmp_path / "exported"
        code, _, err = run(capsys, config, "tickets", "attachment", "1", "--all",
                           "--out", str(exported))
        assert code == 0, err
    assert {p.name: p.read_bytes() for p in exported.iterdir()} == {
        "errore.png": b"first", "log.txt": b"righe", "errore (2).png": b"second"}


def test_db_backup_keeps_the_generated_secret_that_signed_the_mail_already_sent(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, config_data: dict[str, Any]
) -> None:
    config_data["helpdesk"]["secret"] = ""
    config = write_toml(config_data, tmp_path / "generated.toml")
    data_dir = Path(config_data["helpdesk"]["data_dir"])
    backup = tmp_path / "backup"
    assert run(capsys, config, "db", "upgrade")[0] == 0  # signs nothing, makes the secret
    code, out, err = run(capsys, config, "db", "backup", str(backup))
    assert code == 0, err
    assert out.splitlines()[-1] == (f"secret: {data_dir / 'secret'} copied to "
                                    f"{backup / 'secret'} (readable by this user only)")
    assert (backup / "secret").read_bytes() == (data_dir / "secret").read_bytes()
    assert stat.S_IMODE((backup / "secret").stat().st_mode) == 0o600
    assert stat.S_IMODE(backup.stat().st_mode) == 0o700  # every customer's mail is in it
    assert sorted(p.name for p in tmp_path.iterdir() if "backup" in p.name) == ["backup"]


def test_db_backup_with_link_dest_shares_the_files_yesterdays_backup_holds(
    desk: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path, config_data: dict[str, Any]
) -> None:
    """A daily backup copies only the attachment files that are new since the last one;
    each backup stays whole on its own, so the older one can be deleted."""
    _ticket_with_files(desk, capsys, tmp_path)
    yesterday, today = tmp_path / "yesterday", tmp_path / "today"
    assert run(capsys, desk, "db", "backup", str(yesterday))[0] == 0
    cut_short = next(p for p in (yesterday / "attachments").rglob("*") if p.is_file())
    cut_short.write_bytes(b"")  # a copy damaged since: copied again, not shared
    later = tmp_path / "later.eml"
    later.write_bytes(build_mail(subject="Re: [Ticket#2026-000001] Stampa F24",
                                 attachments=[("nuovo.pdf", b"%PDF nuovo", "application/pdf")]))
    assert run(capsys, desk, "--now", NOW, "ingest", str(later))[0] == 0

    code, out, err = run(capsys, desk, "db", "backup", str(today), "--link-dest", str(yesterday))
    assert code == 0, err
    assert out.splitlines()[1] == (
        f"attachments: 4 file(s), 26 bytes, copied to {today / 'attachments'}; 2 of them "
        f"unchanged since {yesterday}, hard-linked to its copies")
    files = {p.relative_to(today / "attachments"): p
             for p in (today / "attachments").rglob("*") if p.is_file()}
    kept = yesterday / "attachments"
    shared = {name for name, p in files.items()
              if (kept / name).exists() and p.samefile(kept / name)}
    assert len(shared) == 2 and cut_short.relative_to(kept) not in shared
    shutil.rmtree(yesterday)
    for name, file in files.items():  # every file whole, its name its content's SHA-256
        assert hashlib.sha256(file.read_bytes()).hexdigest() == name.name

    code, _, err = run(capsys, desk, "db", "backup", str(tmp_path / "next"),
                       "--link-dest", str(tmp_path / "nowhere"))
    assert code == 1
    assert err.strip() == (f"mailgateway: {tmp_path / 'nowhere'} holds no attachments folder: "
                           "it is not a backup to share files with.")


def test_dated_db_backups_share_files_with_the_newest_and_keep_the_last_n(
    desk: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """What the nightly timer runs: each backup named by its time beside the earlier
    ones, hard-linking to the newest, the oldest beyond --keep removed once the new
    one is whole; the admin's own folders there and a killed run's leftover."""
    root = tmp_path / "backups"
    (root / "notes").mkdir(parents=True)
    killed = root / ".2026-03-01T023000Z.partial"
    killed.mkdir()

    def nightly(day: int) -> tuple[int, list[str], str]:
        code, out, err = run(capsys, desk, "--now", f"2026-03-0{day}T02:30:00+00:00",
                             "db", "backup", str(root), "--dated", "--keep", "2")
        return code, out.splitlines(), err

    code, lines, err = nightly(2)  # an empty desk: no file yet
    assert code == 0, err
    first = root / "2026-03-02T023000Z"
    assert lines[1] == f"attachments: 0 file(s), 0 bytes, copied to {first / 'attachments'}"
    _ticket_with_files(desk, capsys, tmp_path)
    code, lines, err = nightly(3)
    assert code == 0, err
    assert lines[1].endswith(f"0 of them unchanged since {first}, hard-linked to its copies")
    code, lines, err = nightly(4)
    assert code == 0, err
    second, third = root / "2026-03-03T023000Z", root / "2026-03-04T023000Z"
    assert lines[1] == (f"attachments: 3 file(s), 16 bytes, copied to {third / 'attachments'}"
                        f"; 3 of them unchanged since {second}, hard-linked to its copies")
    assert lines[3:] == [f"removed {first}: older than the 2 backup(s) kept"]
    assert sorted(p.name for p in root.iterdir()) == [second.name, third.name, "notes"]
    assert all(file.samefile(second / file.relative_to(third))
               for file in (third / "attachments").rglob("*") if file.is_file())

    code, _, err = run(capsys, desk, "db", "backup", str(tmp_path / "other"), "--keep", "2")
    assert code == 1
    assert err.strip() == "mailgateway: --keep removes dated backups: give --dated too."
    with pytest.raises(SystemExit) as refused:  # a backup that keeps none is none
        run(capsys, desk, "db", "backup", str(root), "--dated", "--keep", "0")
    assert refused.value.code == 2
    assert capsys.readouterr().err.endswith(
        "argument --keep: a whole number of at least 1, not '0'\n")


def test_a_dated_backup_that_cannot_remove_an_old_one_fails_and_says_the_new_one_is_whole(
    desk: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The nightly unit fails rather than let old backups fill the disk unseen."""
    root = tmp_path / "backups"
    nightly = ("db", "backup", str(root), "--dated", "--keep", "1")
    assert run(capsys, desk, "--now", "2026-03-02T02:30:00+00:00", *nightly)[0] == 0
    old = root / "2026-03-02T023000Z"
    stuck = next(p for p in old.iterdir() if p.is_file())  # the database's copy or dump
    if subprocess.run(["chattr", "+i", str(stuck)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not allowed here (it needs root and ext4 or the like)")
    try:
        code, _, err = run(capsys, desk, "--now", "2026-03-03T02:30:00+00:00", *nightly)
    finally:
        subprocess.run(["chattr", "-i", str(stuck)], check=True)
    new = root / "2026-03-03T023000Z"
    assert code == 1
    assert err.startswith(f"mailgateway: {new} is whole, but the old backup {old} could not "
                          "be removed: [Errno 1] Operation not permitted")
    assert (new / "attachments").is_dir() and stuck.exists()


def test_a_failed_db_backup_leaves_nothing_that_looks_like_a_backup(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, config_data: dict[str, Any]
) -> None:
    config_data["database"]["url"] = f"sqlite:///{tmp_path / 'gone' / 'mailgateway.db'}"
    config = write_toml(config_data, tmp_path / "gone.toml")
    code, out, err = run(capsys, config, "db", "backup", str(tmp_path / "backup"))
    assert (code, out) == (1, "")
    assert "mailgateway.db does not exist: there is no database to back up." in err
    assert not [p for p in tmp_path.iterdir() if "backup" in p.name]


def test_a_db_backup_whose_pg_dump_fails_says_why_and_keeps_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, config_data: dict[str, Any],
    postgres_url: str
) -> None:
    needs_postgres_client_tools()
    absent = make_url(postgres_url).set(database="mg_no_such_database", password="segreta")
    config_data["database"]["url"] = absent.render_as_string(hide_password=False)
    config = write_toml(config_data, tmp_path / "absent.toml")
    code, out, err = run(capsys, config, "db", "backup", str(tmp_path / "backup"))
    assert (code, out) == (1, "")
    assert err.startswith("mailgateway: pg_dump failed, no backup was made: ")
    assert 'database "mg_no_such_database" does not exist' in err
    assert "segreta" not in err
    assert not [p for p in tmp_path.iterdir() if "backup" in p.name]
