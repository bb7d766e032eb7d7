"""What makes two requests alike, and what a customer's "risolto" looks like. Pure.

The desk's guide says that nearly half of its answers are copied from tickets
already solved, and asks customers not to open a second ticket for the same
incident. Both need the same thing: a request reduced to the words that carry
its meaning. Italian words are reduced to their stems (Snowball, the stemmer
PostgreSQL's `italian` configuration uses too), without stop words, so
"stampare le deleghe" and "la stampa della delega" meet on `stamp` and `deleg`.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import snowballstemmer

from mailgateway.pipeline.quote_patterns import is_signature_start

# Words that say nothing of a problem: Italian articles, prepositions, pronouns,
# auxiliaries, and the greetings and courtesy every request carries.
_STOP_TEXT = """
a ad al allo alla ai agli alle all anche avere abbiamo avete avevo aveva ho ha hanno
c che chi ci come con col cui da dal dallo dalla dai dagli dalle dall del dello della dei
degli delle dell di dove e ed è era ero essere fa fare gli ha i il in io la le lei li lo
loro lui ma mi mia mie miei mio ne nei nel nello nella negli nelle nell no noi non nostro
nostra o per perché più poi qua quale quando quanto quella quelle quelli quello questa
queste questi questo qui se sei si sia sono sta stato stata su sua sue sui sul sullo
sulla sulle suo suoi ti tra fra tu tua tuo tutti tutto un una uno vi voi vostro vostra
già ancora sempre solo molto poco ogni altro altra altri stesso cosa volta ora oggi
buongiorno buonasera salve gentili gentile cortese cortesemente grazie ringrazio saluti
cordiali distinti cordialmente attendo attesa riscontro cortese prego potete potreste
vorrei vorremmo chiedo chiediamo sapere dire fatemi favore the and of to is in for on it
"""
STOP_WORDS = frozenset(_STOP_TEXT.split())

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_LONGEST_WORD = 30   # longer "words" are codes, hashes, base64: no meaning to stem


@lru_cache(maxsize=1)
def _stemmer() -> snowballstemmer.stemmer:
    return snowballstemmer.stemmer("italian")


def _fold(text: str) -> str:
    """Lower case, accents kept (the stemmer knows them), typographic apostrophes split."""
    return unicodedata.normalize("NFC", text).lower().replace("’", " ").replace("'", " ")


def stems(text: str) -> list[str]:
    """The meaningful words of `text`, stemmed, in order, repeated as they come."""
    words = [w for w in _WORD.findall(_fold(text))
             if w not in STOP_WORDS and len(w) <= _LONGEST_WORD and (len(w) > 1 or w.isdigit())]
    return [s for s in map(_stem, words) if s]


@lru_cache(maxsize=65536)
def _stem(word: str) -> str:
    """One word's stem, remembered: a desk's vocabulary is small, and the pure-Python
    stemmer takes about half a millisecond a word."""
    return str(_stemmer().stemWord(word))


# A line that closes a request: what follows is the writer's name, company, telephone.
_VALEDICTION = re.compile(
    r"^\s*(cordiali saluti|distinti saluti|saluti|cordialmente|un saluto|grazie[\w ,!.]*"
    r"|buona giornata|buon lavoro|best regards|kind regards|regards|thanks[\w ,!.]*"
    r"|thank you[\w ,!.]*)\s*[,.!]?\s*$", re.IGNORECASE)


def request_text(body: str) -> str:
    """What a request says of its problem: its text up to the valediction or signature.
    (The ticket keeps every word; only the search leaves the signature out, since
    names and telephone numbers resemble nothing but the same writer's other mail.)"""
    lines = body.splitlines()
    for index, line in enumerate(lines):
        if index and (_VALEDICTION.match(line) or is_signature_start(line)):
            return "\n".join(lines[:index]).strip()
    return body.strip()


def numbers(text: str) -> frozenset[str]:
    """The numbers a text names (error codes, invoice numbers, years)."""
    return frozenset(w.lstrip("0") or "0" for w in _WORD.findall(text) if w.isdigit())


def resemblance(first: str, second: str) -> float:
    """How much two texts share, 0..1: the Jaccard index of their stem sets."""
    a, b = set(stems(first)), set(stems(second))
    if not a or not b:
        return 1.0 if a == b else 0.0
    return len(a & b) / len(a | b)


@dataclass(frozen=True)
class Suggestion:
    """A solved ticket whose request resembles a new one. Another account's ticket
    shows only the technician's answer: its number and subject are that customer's."""

    answer: str
    number: str | None = None
    subject: str | None = None

    def context(self) -> dict[str, str | None]:
        return {"number": self.number, "subject": self.subject, "answer": self.answer}


def says_solved(body: str, solved_words: Iterable[str]) -> bool:
    """True when the answer's first line is one of `solved_words` and nothing else
    ("Risolto!", "chiuso." count; "non è risolto" does not)."""
    for line in body.splitlines():
        if line.strip():
            first = re.sub(r"[\s.!,;:)]+$", "", line.strip()).strip().lower()
            return first in {w.lower() for w in solved_words}
    return False


STATUS_SUBJECTS = frozenset({"stato", "i miei ticket", "status", "my tickets"})


def asks_status(subject: str) -> bool:
    """A mail whose subject is STATO / I MIEI TICKET / STATUS: the portal's page asked by mail."""
    words = " ".join(_WORD.findall(_fold(subject)))
    return words in STATUS_SUBJECTS


# A subject's word counts this many times a request's: subjects name the problem.
SUBJECT_WEIGHT = 3


@dataclass(frozen=True)
class Candidate:
    """A solved ticket the full-text index found, with its terms (subject terms counted
    `SUBJECT_WEIGHT` times)."""

    ticket_id: int
    terms: Mapping[str, int]


def rank(query: Mapping[str, int], candidates: Sequence[Candidate],
         documents: Mapping[str, int], total: int, limit: int) -> list[int]:
    """The `limit` candidates most like `query`, best first: the cosine of their TF-IDF
    vectors (log-scaled counts; `documents[term]` of `total` solved tickets hold the
    term; a term the query lacks counts as rare, so a ticket about much else ranks
    lower). The database's own rankings (BM25, `ts_rank`) find the candidates; this
    orders them, because it weighs a rare shared word above many common ones, and
    measured better on the generated desk (README, "Similar solved tickets")."""
    rare = math.log(1 + max(total, 1))
    idf = {term: math.log(1 + max(total, held) / held)
           for term, held in documents.items() if held > 0}
    weights = _vector(query, idf, rare)
    if not weights:
        return []
    scored = []
    for candidate in candidates:
        vector = _vector(candidate.terms, idf, rare)
        dot = sum(weight * vector.get(term, 0.0) for term, weight in weights.items())
        if dot > 0:
            scored.append((-dot, -candidate.ticket_id, candidate.ticket_id))
    return [ticket_id for _, _, ticket_id in sorted(scored)[:limit]]


def _vector(terms: Mapping[str, int], idf: Mapping[str, float],
            rare: float) -> dict[str, float]:
    vector = {term: (1 + math.log(count)) * idf.get(term, rare)
              for term, count in terms.items() if count > 0}
    norm = math.sqrt(sum(v * v for v in vector.values()))
    return {t: v / norm for t, v in vector.items()} if norm else {}


def weighted_terms(subject: Iterable[str], request: Iterable[str]) -> dict[str, int]:
    """Term counts of a subject's and a request's stems, the subject's weighted."""
    counts: dict[str, int] = {}
    for term in subject:
        counts[term] = counts.get(term, 0) + SUBJECT_WEIGHT
    for term in request:
        counts[term] = counts.get(term, 0) + 1
    return counts
