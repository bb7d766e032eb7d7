"""Per-mail pipeline time with no routing rules, and with 200.

The corpus is stored first, then processed one mail at a time in this process, as the
processor of `serve` does: parse, facts, rules, decision, writes, commit. The 200 rules
are the desk's examples (`rules/`) and generated ones of the kinds admins write —
subject, body, sender, header and attachment patterns — most matching nothing, a few
continuing, so every mail is tried against all of them.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from mailgateway.clock import SystemClock
from mailgateway.config import Settings
from mailgateway.pipeline.parse import parse_mail
from mailgateway.pipeline.rules import DeskNames, MailFacts, headers_of, load_rules, match
from mailgateway.service import Gateway

REPO_RULES = Path(__file__).resolve().parents[1] / "rules"

_KINDS = (
    ("when.subject = '(?i)\\bgestionale{n}\\b'", "set.product = 'Gestionale {n}'"),
    ("when.body = '(?i)codice errore {n}\\b'", "set.impact = 'bloccato'"),
    ("when.from = '*@cliente{n}.example'", "set.request_type = 'commerciale'"),
    ("when.header.\"X-Mailer\" = '^Programma {n} '", "set.language = 'en'"),
    ("when.attachment = '(?i)^report-{n}\\.pdf$'", "continue = true\nset.impact = 'difficolta'"),
)


def write_rules(directory: Path, count: int) -> int:
    """`count` rules in `directory`: the desk's examples, then generated ones."""
    directory.mkdir(parents=True, exist_ok=True)
    if count == 0:
        return 0
    written = 0
    for example in sorted(REPO_RULES.glob("*.toml")):
        shutil.copy(example, directory / example.name)
        written += example.read_text(encoding="utf-8").count("[[rule]]")
    lines = []
    for n in range(count - written):
        when, then = _KINDS[n % len(_KINDS)]
        lines += ["[[rule]]", f"name = 'generata-{n}'", when.format(n=n),
                  then.format(n=n), ""]
    (directory / "90-generate.toml").write_text("\n".join(lines), encoding="utf-8")
    return count


def bench_rules(settings: Settings, mails: list[bytes], rules: Path) -> dict[str, Any]:
    """Milliseconds per mail of the pipeline with the rules in `rules`, wall and CPU: the
    CPU figure leaves out the commits' waits for the disk, which swamp a rule's cost."""
    settings = replace(settings, rules=replace(settings.rules, path=str(rules)))
    gateway = Gateway(settings, SystemClock())
    try:
        loaded = len(gateway.rules.current().rules)
        if gateway.rules.errors:
            raise RuntimeError(f"rules refused: {gateway.rules.errors}")
        stored = [gateway.receive(raw, transport="pipe").inbox_id for raw in mails]
        started, cpu_started = time.perf_counter(), time.process_time()
        for inbox_id in stored:
            gateway.process(inbox_id)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    finally:
        gateway.close()
    return {"rules": loaded, "mails": len(stored), "ms_per_mail": 1000 * seconds / len(stored),
            "cpu_ms_per_mail": 1000 * cpu_seconds / len(stored)}


def bench_matching(mails: list[bytes], rules: Path, groups: Sequence[str]) -> dict[str, Any]:
    """Microseconds per mail of matching alone: the rule engine's own cost, apart from
    what the rules' fields then change (other groups told, other languages written)."""
    ruleset, errors = load_rules(rules, DeskNames(groups=groups))
    if errors:
        raise RuntimeError(f"rules refused: {errors}")
    parsed = [parse_mail(raw) for raw in mails]
    facts = [MailFacts(subject=mail.subject, body=mail.text, sender=mail.from_addr,
                       recipients=tuple(mail.to), headers=headers_of(mail.headers),
                       attachments=tuple(a.filename for a in mail.attachments), account=None)
             for mail in parsed]
    started = time.process_time()
    for one in facts:
        match(ruleset, one)
    return {"rules": len(ruleset.rules),
            "us_per_mail": 1e6 * (time.process_time() - started) / len(facts)}
