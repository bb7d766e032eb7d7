"""The words and habits the generated mail is made of: Italian helpdesk vocabulary.

Studios and companies writing to an accounting-software helpdesk: their names, the
products they use, what goes wrong, how they greet and sign, and how each mail client
(Outlook, Thunderbird, Gmail, Apple Mail) lays a mail out. Only data and the small helpers
that turn it into text live here; what is drawn from it, and in which order, is up to
`benchmarks.generate` (the order of every draw is what keeps a seed's bytes stable, so
reordering a table changes the corpus).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from datetime import datetime
from random import Random

FIRST_NAMES = (
    "Mario",
    "Giulia",
    "Niccolò",
    "Francesca",
    "Luca",
    "Chiara",
    "Andrea",
    "Lucia",
    "Paolo",
    "Sofia",
    "Mattia",
    "Elena",
    "Nicolò",
    "Martina",
    "Davide",
    "Zoë",
    "Simone",
    "Federica",
    "Gianluca",
    "Beatrice",
)
LAST_NAMES = (
    "Rossi",
    "Bianchi",
    "Ferrè",
    "Esposito",
    "Russo",
    "Romano",
    "Colombo",
    "Ricci",
    "Marino",
    "Greco",
    "Bruno",
    "Gallo",
    "Conti",
    "De Luca",
    "Mancini",
    "Costa",
    "Giordano",
    "Rizzo",
    "Lombardi",
    "Moretti",
    "D'Angelo",
    "Cantù",
    "Forlì",
    "Pellè",
)
COMPANY_FORMS = (
    "Studio {last} & Associati",
    "Studio Commercialista {first} {last}",
    "{last} S.r.l.",
    "{last} & {other} S.n.c.",
    "Studio Associato {last} – Consulenza del Lavoro",
    "Caffè {last} S.p.A.",
    "Centro Elaborazione Dati {last}",
)
MAILBOXES = ("{first}.{last}", "{first}", "segreteria", "amministrazione", "info")
PROVINCE_OFFICES = ("021", "015", "058", "063", "037", "001", "048", "082", "096")

PRODUCTS = (
    "Multi / Lynfa Studio (Cod. 2)",
    "Lynfa Azienda (Cod. 4)",
    "Gamma Evolution (Cod. 6)",
    "Paghe Studio (Cod. 8)",
    "Fatturazione elettronica (Cod. 11)",
    "Conservazione digitale (Cod. 12)",
)
REQUEST_TYPES = ("tecnica", "tecnica", "tecnica", "commerciale", "amministrativa")
IMPACTS = ("Sono bloccato", "Riesco a lavorare, con difficoltà")
MONTHS = (
    "gennaio",
    "febbraio",
    "marzo",
    "aprile",
    "maggio",
    "giugno",
    "luglio",
    "agosto",
    "settembre",
    "ottobre",
    "novembre",
    "dicembre",
)
WEEKDAYS = ("lun", "mar", "mer", "gio", "ven", "sab", "dom")

SUBJECTS = (
    "ERRORE {code} ON MOCO",
    "Lynfa: stampa F24 bloccata",
    "Errore {code} all'apertura dell'archivio ditte",
    "Multi: la contabilità non si apre più",
    "Invio telematico 730 — ricevuta non scaricata",
    "Fatturazione elettronica: fattura scartata dallo SdI (codice 00305)",
    "Richiesta preventivo per il modulo Paghe",
    "Fattura n. {number}/{year} non ricevuta",
    "Aggiornamento alla versione {version} non riuscito",
    "Perché il bilancio CEE non quadra?",
    "Cedolini di {month}: errore nel calcolo del TFR",
    "Lynfa Azienda: registrazione prima nota impossibile",
    "Conservazione sostitutiva: firma non più valida",
    "Stampa registri IVA molto più lenta del solito",
    "Licenza scaduta, non riesco più a entrare",
    "Richiesta attivazione nuovo utente per la segreteria",
    "Modello Redditi PF: quadro RW non compilabile",
    "Stampante non più riconosciuta dopo l'aggiornamento di Windows",
    "Importazione estratto conto CBI fallita",
    "Codice errore {code} all'avvio di MPRI",
    "URGENTE: liquidazione IVA trimestrale, importi errati",
    "Domanda sul canone di assistenza {year}",
)
DESCRIPTIONS = (
    "Quando vado su MPRI, esce una maschera di errore cobol e poi mi esce dal programma.",
    (
        "Da stamattina non riesco più a stampare l'F24: il programma resta fermo su "
        "«Elaborazione in corso…» e poi si chiude senza messaggi."
    ),
    "All'apertura della ditta {company_code} compare l'errore {code} e non si può proseguire.",
    (
        "Non capisco perché l'IVA a debito risulti diversa da quella della liquidazione: "
        "la differenza è di {amount} €."
    ),
    "Vorrei sapere quanto costa aggiungere una postazione e se è compresa nel canone annuo.",
    (
        "Non abbiamo ricevuto la fattura del canone di manutenzione; potete reinviarla "
        "all'indirizzo dell'amministrazione?"
    ),
    (
        "Lo SdI ha scartato la fattura n. {number} con il codice 00305 (IdFiscaleIVA del "
        "cessionario non valido), ma la partita IVA è corretta."
    ),
    (
        "Dopo l'aggiornamento alla versione {version} il programma chiede di nuovo "
        "l'attivazione della licenza."
    ),
    (
        "L'importazione del file CBI della banca si interrompe al movimento {number} con il "
        "messaggio «tracciato non riconosciuto»."
    ),
    (
        "Nei cedolini di {month} il TFR maturato è più alto del dovuto per tutti i "
        "dipendenti a tempo parziale."
    ),
)
DETAILS = (
    "Ho già provato a riavviare il server ma il problema si ripresenta identico.",
    "È la terza volta questa settimana e siamo in scadenza: potete richiamarmi al più presto?",
    "Il collega ha già aggiornato all'ultima release però l'errore è rimasto.",
    "Succede solo sulla postazione della segreteria; sulle altre funziona.",
    "Il sistema operativo è Windows 11 Pro, la versione del programma è {version}.",
    "Potete verificare anche se la nostra licenza è attiva fino a fine anno?",
    "Non so se può essere utile, ma ieri sera è mancata la corrente per qualche minuto.",
)
REPLY_OPENINGS = (
    "Grazie per la risposta, ho provato come indicato ma l'errore si ripresenta.",
    "Ecco la schermata che mi avevate chiesto.",
    "Aggiungo un dettaglio: l'errore compare solo dopo aver selezionato l'anno {year}.",
    "Sollecito: siamo ancora bloccati, è davvero urgente perché scade il termine.",
    "Il numero di versione è {version}; il server è stato riavviato stamattina.",
    "Scusate, dimenticavo: la ditta interessata è la {company_code}.",
    "Vi giro anche il messaggio che compare in basso a sinistra, forse è più chiaro.",
    "Ho fatto la prova sul portatile e lì funziona; sul server no.",
)
GREETINGS = ("Buongiorno,", "Buonasera,", "Salve,", "Gentile assistenza,", "Ciao,")
CLOSINGS = ("Cordiali saluti", "Grazie, buona giornata", "Saluti", "Grazie mille")


@dataclass(frozen=True)
class MailClient:
    """How one mail client writes: its header, reply prefixes, encodings, HTML habit."""

    header: tuple[str, str] | None
    prefixes: tuple[str, ...]
    encodings: tuple[str, ...]
    html_share: float


CLIENTS = {
    "outlook": MailClient(
        header=("X-Mailer", "Microsoft Outlook 16.0"),
        prefixes=("R: ", "R: ", "RIF: "),
        encodings=("quoted-printable", "base64"),
        html_share=0.9,
    ),
    "thunderbird": MailClient(
        header=(
            "User-Agent",
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 "
                "Thunderbird/128.5.0"
            ),
        ),
        prefixes=("Re: ",),
        encodings=("8bit", "8bit", "quoted-printable"),
        html_share=0.2,
    ),
    "gmail": MailClient(
        header=None,
        prefixes=("Re: ",),
        encodings=("quoted-printable", "base64"),
        html_share=1.0,
    ),
    "apple": MailClient(
        header=("X-Mailer", "Apple Mail (2.3776.700.51)"),
        prefixes=("Re: ", "R: "),
        encodings=("quoted-printable", "8bit"),
        html_share=0.5,
    ),
}


def template_values(rng: Random, year: int) -> dict[str, object]:
    """Return the values the subject and body templates may use."""
    return {
        "code": f"{rng.randint(1, 99)},{rng.randint(1, 40)}",
        "number": rng.randint(1, 480),
        "year": year,
        "version": f"{year % 100}.{rng.randint(0, 9)}.{rng.randint(0, 30)}",
        "month": rng.choice(MONTHS),
        "amount": f"{rng.randint(1, 9999)},{rng.randint(0, 99):02d}",
        "company_code": f"{rng.randint(1, 999):04d}",
    }


def italian_date(when: datetime) -> str:
    """Format `when` the way Italian mail clients write it above a quote."""
    return (
        f"{WEEKDAYS[when.weekday()]} {when.day} {MONTHS[when.month - 1][:3]} "
        f"{when.year} alle ore {when:%H:%M}"
    )


def ascii_slug(text: str) -> str:
    """Return `text` lower-cased, accents dropped, other characters turned into dashes."""
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    out = "".join(ch if ch.isalnum() else "-" for ch in plain.lower())
    return "-".join(part for part in out.split("-") if part)
