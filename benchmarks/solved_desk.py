"""A desk of solved tickets for the suggestion search: 50 distinct problems, each
written in varied words, by the generated studios and companies.

A problem is an area of the programs (the F24, the VAT settlement, the payslips…)
and a symptom (it blocks, an error code, wrong amounts, slowness, broken by an
update). Each has several subjects and sentences saying it in other words, and a
request is one of each, between the greetings, details and signatures of the
benchmark generator's vocabulary, so two requests about one problem may share
few words and requests about different problems share many. Seeded: a seed gives
the same desk every time.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from random import Random

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from benchmarks.corpus import Account
from benchmarks.generate import generate_accounts
from benchmarks.mail_builder import compose_text
from benchmarks.vocabulary import DETAILS, GREETINGS, template_values
from mailgateway.db.models import Account as AccountRow
from mailgateway.db.models import Message, SolvedTicket, Ticket
from mailgateway.pipeline.similar import request_text
from mailgateway.solved import index_solved, write_search_words

# (short name for subjects, ways of naming it in a sentence, what the technician fixes)
AREAS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("F24", ("le deleghe F24", "il modello F24", "l'F24 dei versamenti",
             "la delega di pagamento F24"), "l'archivio tributi dell'F24"),
    ("Liquidazione IVA", ("la liquidazione IVA", "la liquidazione periodica dell'IVA",
                          "il calcolo della liquidazione IVA trimestrale", "l'IVA da versare"),
     "i progressivi della liquidazione"),
    ("Cedolini", ("i cedolini paga", "le buste paga", "i cedolini dei dipendenti",
                  "l'elaborazione dei cedolini"), "le tabelle contrattuali delle paghe"),
    ("Fattura elettronica", ("le fatture elettroniche", "l'invio delle fatture allo SdI",
                             "la fatturazione elettronica",
                             "le fatture XML verso il Sistema di Interscambio"),
     "il canale di trasmissione allo SdI"),
    ("Conservazione", ("la conservazione digitale", "la conservazione sostitutiva dei documenti",
                       "il pacchetto di conservazione", "l'archivio in conservazione"),
     "il certificato di firma della conservazione"),
    ("Bilancio CEE", ("il bilancio CEE", "il bilancio d'esercizio in formato CEE",
                      "la riclassificazione del bilancio CEE", "il prospetto di bilancio"),
     "il piano dei conti riclassificato"),
    ("730", ("il modello 730", "le dichiarazioni 730", "l'invio telematico del 730",
             "i 730 precompilati"), "l'ambiente Entratel del 730"),
    ("CBI", ("l'estratto conto CBI", "l'importazione dei movimenti bancari CBI",
             "il file CBI della banca", "i movimenti della banca in formato CBI"),
     "il tracciato CBI della banca"),
    ("Registri IVA", ("i registri IVA", "la stampa dei registri IVA vendite e acquisti",
                      "il registro IVA acquisti", "i registri IVA bollati"),
     "la numerazione dei registri"),
    ("Licenza", ("la licenza del programma", "l'attivazione della licenza",
                 "il codice di licenza", "la chiave di attivazione"),
     "il file di licenza sul server"),
)

# (subjects, what the area does, the fix): {short} and {area} are the area's, {code} the
# problem's. A request says the area and what it does in one of several ways, after one
# of the openings every problem shares.
SYMPTOMS: tuple[tuple[tuple[str, ...], tuple[str, ...], str], ...] = (
    (("{short}: il programma si blocca", "{short} bloccato", "Blocco su {short}"),
     ("si blocca e devo chiudere il programma da Gestione attività",
      "manda in blocco il programma, che resta fermo e non risponde",
      "fa piantare tutto: la finestra non risponde più",
      "congela il gestionale, che poi si chiude da solo"),
     "il blocco dipende da un indice danneggiato: lanci Utilità > Ricostruzione archivi su"),
    (("{short}: errore {code}", "Errore {code} su {short}", "Codice errore {code} in {short}"),
     ("dà il messaggio di errore {code} e non si può proseguire",
      "fa uscire l'errore {code}",
      "mostra una maschera di errore con codice {code}",
      "segnala l'errore {code} e l'operazione si interrompe"),
     "l'errore {code} indica un parametro mancante: lo imposti in Configurazione per"),
    (("{short}: importi errati", "{short} non quadra", "Totali sbagliati in {short}"),
     ("riporta importi che non corrispondono: la differenza è di {amount} euro",
      "dà totali sbagliati rispetto ai conti",
      "non quadra con quanto registrato in contabilità",
      "calcola valori diversi da quelli attesi, senza che riusciamo a spiegarlo"),
     "la differenza nasce da movimenti provvisori: li confermi e ricalcoli"),
    (("{short} lentissimo", "Lentezza su {short}", "{short}: tempi di elaborazione lunghi"),
     ("è diventato lentissimo: ci vogliono minuti per ogni operazione",
      "richiede moltissimo tempo per l'elaborazione",
      "impiega un'eternità a completarsi",
      "fa aspettare a lungo, la clessidra resta per dieci minuti"),
     "la lentezza si risolve compattando gli archivi dell'anno e riorganizzando"),
    (("{short} non funziona dopo l'aggiornamento", "Aggiornamento: problemi con {short}",
      "Dopo l'update {short} non va"),
     ("non funziona più dopo l'aggiornamento alla versione {version}",
      "non si riesce più a usare da quando abbiamo installato l'ultimo aggiornamento",
      "ha smesso di funzionare con la nuova release",
      "dà problemi da quando abbiamo aggiornato il gestionale"),
     "l'aggiornamento va completato con la conversione degli archivi per"),
)
OPENINGS = ("Da stamattina", "Da qualche giorno", "Da ieri", "Da lunedì", "In questi giorni",
            "Sulla postazione principale", "Oggi", "Ogni volta che ci lavoriamo,",
            "Da quando è iniziato il mese", "Come vi dicevo al telefono,")

PROBLEMS = len(AREAS) * len(SYMPTOMS)


@dataclass(frozen=True)
class DeskRequest:
    """One customer's request about `problem`, and the technician's answer to it."""

    problem: int
    account: Account
    subject: str
    body: str
    answer: str


def _problem(problem: int) -> tuple[tuple[str, tuple[str, ...], str],
                                    tuple[tuple[str, ...], tuple[str, ...], str], str]:
    area, symptom = divmod(problem, len(SYMPTOMS))
    return AREAS[area], SYMPTOMS[symptom], f"{90 + area},{10 + symptom * 7}"


def request(rng: Random, problem: int, account: Account, year: int = 2026) -> DeskRequest:
    """A request about `problem` as `account` might write it."""
    (short, areas, part), (subjects, sentences, fix), code = _problem(problem)
    values = {**template_values(rng, year), "code": code}
    phrase = rng.choice(areas)
    subject = rng.choice(subjects).format(short=short, **values)
    sentence = f"{rng.choice(OPENINGS)} {phrase} {rng.choice(sentences).format(**values)}."
    lines = [rng.choice(GREETINGS), "", sentence]
    lines += [d.format(**values) for d in rng.sample(DETAILS, rng.randint(0, 2))]
    body = compose_text(rng, lines, account)
    answer = (f"Buongiorno,\n{fix.format(**values)} {part}.\nSe il problema si ripresenta "
              "ci scriva pure.\n\nCordiali saluti,\nL'assistenza")
    return DeskRequest(problem, account, subject, body, answer)


def solved_desk(count: int, accounts: int = 20, seed: int = 7) -> Iterator[DeskRequest]:
    """`count` solved requests spread over `accounts` accounts and every problem."""
    rng = Random(seed)
    people = generate_accounts(seed, accounts)
    for index in range(count):
        yield request(rng, index % PROBLEMS, rng.choice(people))


def new_requests(count: int, accounts: Sequence[Account], seed: int = 11) -> list[DeskRequest]:
    """Fresh requests, with other draws of words, about random problems."""
    rng = Random(seed)
    return [request(rng, rng.randrange(PROBLEMS), rng.choice(accounts)) for _ in range(count)]


def desk_accounts(accounts: int = 20, seed: int = 7) -> list[Account]:
    return generate_accounts(seed, accounts)


def load_desk(session: Session, requests: Sequence[DeskRequest], *, first_id: int = 1,
              bulk: bool = False) -> dict[str, int]:
    """Write `requests` as CHIUSO tickets with their answer and index them; the
    accounts' ids by address. `bulk`: plain INSERTs of the tickets and the index rows
    (a benchmark's 100,000); otherwise each ticket goes through `index_solved`, as
    when a technician closes it."""
    when = datetime(2025, 6, 1, 9, 0, tzinfo=UTC)
    accounts = {a.main_email: a.id for a in session.scalars(select(AccountRow))}
    for request in requests:
        if request.account.email not in accounts:
            row = AccountRow(name=request.account.name, main_email=request.account.email,
                             vat_number=request.account.vat, created_at=when)
            session.add(row)
            session.flush()
            accounts[row.main_email] = row.id
    tickets, solved, words, messages = [], [], [], []
    for offset, request in enumerate(requests):
        ticket_id, account_id = first_id + offset, accounts[request.account.email]
        tickets.append({
            "id": ticket_id, "number": f"2025-{ticket_id:06d}", "status": "CHIUSO",
            "subject": request.subject, "request_type": "tecnica", "impact": "difficolta",
            "account_id": account_id, "language": "it", "rules": [], "watchers": [],
            "created_at": when, "updated_at": when, "closed_at": when})
        messages += [
            {"ticket_id": ticket_id, "direction": "in", "author": request.account.email,
             "body": request.body, "internal": False, "refused_attachments": [],
             "created_at": when},
            {"ticket_id": ticket_id, "direction": "out", "author": "tecnico@example.com",
             "body": request.answer, "internal": False, "refused_attachments": [],
             "created_at": when}]
        body = request_text(request.body)
        solved.append({"ticket_id": ticket_id, "account_id": account_id, "closed_at": when,
                       "subject": request.subject, "request": body, "answer": request.answer})
        words.append((ticket_id, account_id, request.subject, body))
    session.execute(insert(Ticket), tickets)
    if bulk:
        session.execute(insert(SolvedTicket), solved)
        write_search_words(session, words)
        return accounts
    session.execute(insert(Message), messages)
    for ticket in session.scalars(select(Ticket).where(Ticket.id >= first_id)):
        index_solved(session, ticket)
    return accounts
