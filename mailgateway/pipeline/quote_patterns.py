"""What single lines of a reply look like, in every language the desk receives.

`quote` finds quote headers and signatures by scanning windows of lines; the
words and shapes it looks for live here, apart from that algorithm, because they
are what grows: a new client or language means a new word in a list below, never
a change to the scan. Every test here looks at one line; the scan hands the
quote-header tests only lines of at most `MAX_HEADER_LINE` characters, which is
what keeps its work linear whatever the input.
"""

from __future__ import annotations

import re

MAX_HEADER_LINE = 400
"""Quote headers are short; longer lines are never pattern-matched (keeps the work linear)."""

_WRAP_SUSPECT = 60
"""A quoted line at least this long, ending mid-sentence, may have been wrapped by a client."""

_MAX_SIGNATURE_WORDS = 10
"""A "Sent from my …" line longer than this is a sentence, not a client's signature."""

# --- line shapes --------------------------------------------------------------------------------

_QUOTED = re.compile(r"^[ \t]*(?:>|[A-Za-z]{1,10}>(?=\s|$))")
_WRAPPED_CLOSE = re.compile(
    r"^[ \t]*>[ \t]*(?:wrote|schrieb|a écrit|ha scritto)?[ \t]*[:：][ \t]*$", re.I
)
"""A wrapped attribution's last line (">:", "> wrote:"): it only looks quoted."""
ADDRESS_FRAGMENT = re.compile(r"^[ \t]*(?:<|>|mailto:|\S+@\S+[ \t]*$)")
_BARE_QUOTE = re.compile(r"^[ \t]*(?:>[ \t]*)+$")
SEPARATOR_ONLY = re.compile(r"^[-_=*~#+.·•ᐧ–—\s\u200b]*$")
_UNDERSCORE_RULE = re.compile(r"^[ \t]*_{7,}[ \t]*$")
_DASH_RULE = re.compile(r"^[ \t]*[*_]*-{3,}[ \t]*[*_]*[ \t]*$")
_STAR_RULE = re.compile(r"^[ \t]*(?:\*[ \t]*){3,}$")
"""An HTML `<hr>` as the text of an HTML-only mail shows it ("* * *")."""
_DASHED_TITLE = re.compile(
    r"^[ \t]*[*_]*-{3,}[ \t]*[^\W\d_][\w' ]{0,40}?[ \t]*-{3,}[ \t]*[*_]*[ \t]*$"
)
"""A "----- Original Nachricht ----" rule in a wording not listed, seen right above headers."""
_SIGNATURE_DELIMITER = re.compile(r"^(?:--|__)[ \t]*$")
DASH_NAME = re.compile(r"^-(?=[A-ZÀ-ÖØ-Þ])[^\W\d_][\w.'’-]*(?:[ \t]+[^\W\d_][\w.'’-]*){0,2}[ \t]*$")
"""A closing "-Abhishek Kona"; a list item ("- backup", "-backup") is not one."""

_ORIGINAL_PHRASES = (
    r"original message|messaggio originale|ursprüngliche nachricht|original-?nachricht"
    r"|mail original|message original"
    r"|message d'origine|mensaje original|mensagem original|oorspronkelijk bericht"
    r"|origineel bericht|oprindelig meddelelse|opprinnelig melding|originalmeddelande"
    r"|ursprungligt meddelande|wiadomość oryginalna|oryginalna wiadomość"
    r"|исходное сообщение|původní zpráva|alkuperäinen viesti|eredeti üzenet"
)
_FORWARD_PHRASES = (
    r"forwarded message|messaggio inoltrato|weitergeleitete nachricht|message transféré"
    r"|mensaje reenviado|mensagem encaminhada|doorgestuurd bericht|videresendt meddelelse"
    r"|videresendt melding|vidarebefordrat meddelande|wiadomość przekazana"
    r"|przekazana wiadomość|пересылаемое сообщение|přeposlaná zpráva"
)
ORIGINAL_SEPARATOR = re.compile(
    rf"^[ \t]*[*_]*[-=_]{{2,}}[ \t]*(?:{_ORIGINAL_PHRASES})[ \t]*[-=_]*[ \t]*[*_]*[ \t]*$",
    re.IGNORECASE,
)
FORWARD_SEPARATOR = re.compile(
    rf"^[ \t]*[*_]*(?:[-=_]{{2,}}[ \t]*(?:{_FORWARD_PHRASES})[ \t]*[-=_]*"
    r"|(?:begin forwarded message|inizio messaggio inoltrato|messaggio inoltrato"
    r"|anfang der weitergeleiteten nachricht|début du message (?:réexpédié|transféré)"
    r"|(?:comienzo|inicio) del mensaje reenviado|início da mensagem reencaminhada"
    r"|begin doorgestuurd bericht|videresendt besked)[ \t]*:?)[ \t]*[*_]*[ \t]*$",
    re.IGNORECASE,
)

# --- Outlook-style header blocks ----------------------------------------------------------------

_FROM_KEYS = ("from", "da", "von", "de", "van", "från", "fra", "od", "от", "lähettäjä", "feladó",
              "kimden", "差出人", "发件人", "寄件者")  # fmt: skip
_DATE_KEYS = ("sent", "date", "inviato", "data", "gesendet", "datum", "envoyé", "envoyé le",
              "enviado", "enviado el", "enviada", "fecha", "verzonden", "skickat", "sendt",
              "wysłano", "wysłane", "отправлено", "дата", "odesláno", "lähetetty", "elküldve",
              "gönderildi", "送信日時", "发送时间", "日期")  # fmt: skip
_TO_KEYS = ("to", "a", "an", "à", "para", "aan", "till", "til", "do", "кому", "komu",
            "vastaanottaja", "címzett", "kime", "宛先", "收件人")  # fmt: skip
_SUBJECT_KEYS = ("subject", "oggetto", "ogg", "betreff", "objet", "asunto", "assunto",
                 "onderwerp", "ämne", "emne", "temat", "тема", "předmět", "aihe", "tárgy", "konu",
                 "件名", "主题", "主旨")  # fmt: skip
_HEADER_ROLES: dict[str, str] = {
    **dict.fromkeys(_FROM_KEYS, "from"),
    **dict.fromkeys(_DATE_KEYS, "date"),
    **dict.fromkeys(_TO_KEYS, "to"),
    **dict.fromkeys(_SUBJECT_KEYS, "subject"),
    **dict.fromkeys(("cc", "ccn", "bcc", "kopia", "копия", "kopie"), "cc"),
    **dict.fromkeys(("reply-to", "risposta", "antwort", "répondre", "responder"), "reply-to"),
}
_HEADER_KEY_RE = "|".join(sorted(map(re.escape, _HEADER_ROLES), key=len, reverse=True))
_HEADER_LINE = re.compile(r"^[ \t]*[*_]{0,2}([^\W\d_]+(?:[ -][^\W\d_]+)?)[*_]{0,2}[ \t]*[:：]")
_INLINE_HEADER = re.compile(rf"(?:^|\s)[*_]{{0,2}}({_HEADER_KEY_RE})[*_]{{0,2}}[ \t]*[:：]", re.I)

# --- attributions ("On … wrote:") ---------------------------------------------------------------

VERB_AT_END = re.compile(
    r"(?:^|[\s\"'>)\]»])(?:wrote|writes|ha scritto|hanno scritto|scrisse|schrieb|a écrit"
    r"|a ecrit|escribió|escribio|escreveu|geschreven|schreef|skrev|napisał(?:\(a\)|a)?"
    r"|napisal|написал(?:\(а\)|а)?|пише|написав|napsal(?:\(a\)|a)?|kirjoitti|írta|yazdı"
    r"|έγραψε|写道|寫道)[ \t\u00a0]*[:：]?[ \t\u00a0]*(?:-{2,}[ \t]*)?$",
    re.IGNORECASE,
)
# The longest verb above plus the character before it: a match of VERB_AT_END starts
# no further than this from where the trailing colon, dashes and blanks begin.
_VERB_REACH = len("hanno scritto") + 1
_AFTER_VERB = " \t\u00a0:：-\n"


def verb_at_end(text: str) -> re.Match[str] | None:
    """`VERB_AT_END.search(text)`, tried only where a match can start: the same result,
    without trying every alternative at every position of a long line."""
    start = len(text.rstrip(_AFTER_VERB)) - _VERB_REACH
    return VERB_AT_END.search(text, max(start, 0))


VERB_INSIDE = re.compile(
    r"(?:^|\s)(?:schrieb|skrev|schreef|napisał|napisal|написал|пише|napsal|kirjoitti"
    r"|escribió|a écrit|ha scritto|wrote)(?=\s|$|:)",
    re.IGNORECASE,
)
OPENER = re.compile(
    r"^[ \t]*(?:-{2,}[ \t]*)?(?:(?:On|Il|Am|Le|El|Em|Op|Den|Dnia|W dniu|Dne|At|Kl\.)\b|\d)",
)
_WEEKDAYS = (
    r"mon|tue|wed|thu|fri|sat|sun|lun|mar|mer|gio|ven|sab|dom|mo|di|mi|do|fr|sa|so|mié|jue|vie"
    r"|sáb|lu|ma|me|je|ve|sa|di|пн|вт|ср|чт|пт|сб|вс|pon|wt|śr|czw|pt|sob|niedz"
)
DATE_LED = re.compile(
    r"^[ \t]*\d{4}[-/.年]|^[ \t]*\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}\b"
    rf"|^[ \t]*(?:{_WEEKDAYS})\.?,[ \t]*\d{{1,2}}\.?[ \t]+[^\W\d_]+\.?[ \t]+\d{{4}}\b",
    re.IGNORECASE,
)
"""A line led by a date: "2016-10-24", "24/10/2016", "Thu, 26 Jun 2014" (any language)."""
GMT_STAMP = re.compile(r"\bGMT[+-]\d")
STAMP = re.compile(r"@|\d{1,2}[:.]\d{2}")
"""An address or a time: what tells "Il 3 feb alle 10:12 Mario ha scritto:" from a sentence."""
ADDRESS_AT_END = re.compile(r"@[\w.\-]+>?[ \t]*[:：]?[ \t]*$")

# --- signatures from mail clients ---------------------------------------------------------------

_POSSESSIVE_SIGNATURE = re.compile(
    r"^(?:sent from my|inviato dal mio|inviato da mio|envoyé de mon|envoyé depuis mon"
    r"|envoyé à partir de mon|von meinem|gesendet von meinem|enviado desde mi|enviado do meu"
    r"|enviado de meu|enviado desde o meu|verzonden vanaf mijn|verstuurd vanaf mijn"
    r"|verzonden met mijn|sendt fra min|skickat från min|wysłane z mojego"
    r"|diese nachricht wurde von meinem)\b",
)
_SENT_WITH = re.compile(
    r"^(?:sent|inviato|envoyé|gesendet|enviado|verzonden|verstuurd|sendt|skickat|wysłane)"
    r" (?:from|da|dal|con|with|via|using|by|de|depuis|avec|von|mit|desde|do|vanaf|met|fra"
    r"|från|med|z)\b",
)
_GET_APP = re.compile(
    r"^(?:get|ottieni|scarica|download|obtenir|obtener|descargar|baixe|hol dir)\W+outlook\b"
    r"|^outlook für (?:ios|android)|^(?:從我的|发自我的|來自我的)",
)
_APP_TOKENS = frozenset(
    ("iphone", "ipad", "ipod", "android", "outlook", "mail", "mailbox", "yahoo", "gmail",
     "blackberry", "samsung", "galaxy", "huawei", "xiaomi", "smartphone", "mobile", "mobil",
     "cellulare", "telefono", "phone", "tablet", "device", "dispositivo", "airmail", "spark",
     "libero", "tiscali", "virgilio", "protonmail", "proton", "windows", "aquamail", "bluemail",
     "edison", "hey", "superhuman", "thunderbird", "posta", "email", "e-mail")
)  # fmt: skip
"""Words that make "Inviato da …" / "Sent from …" a mail client's line rather than a sentence."""


def is_blank(line: str) -> bool:
    """Empty or whitespace only: paragraph breaks, never a marker."""
    return not line.strip()


def is_quoted(line: str) -> bool:
    """Quoted history ("> …", "Name> …"); a wrapped attribution's ">:" only looks quoted."""
    return _QUOTED.match(line) is not None and _WRAPPED_CLOSE.match(line) is None


def inspectable(line: str) -> bool:
    """Short, non-blank, unquoted: the only lines that may be part of a quote header."""
    return len(line) <= MAX_HEADER_LINE and not is_blank(line) and not is_quoted(line)


def _is_mobile_signature(line: str) -> bool:
    """A client's own sign-off ("Inviato da iPhone"), not a sentence that starts the same way."""
    if len(line) > MAX_HEADER_LINE:
        return False
    words = line.strip(" \t()<>[]").lower().split()
    if not words or len(words) > _MAX_SIGNATURE_WORDS:
        return False
    lowered = " ".join(words)
    if _POSSESSIVE_SIGNATURE.match(lowered) or _GET_APP.match(lowered):
        return True
    if _SENT_WITH.match(lowered):
        tokens = re.findall(r"[\w-]+", " ".join(words[2:7]))
        return any(token in _APP_TOKENS for token in tokens)
    return False


def is_signature_start(line: str) -> bool:
    """Where an author's signature, or a list footer under it, begins."""
    return bool(
        _SIGNATURE_DELIMITER.match(line)
        or _UNDERSCORE_RULE.match(line)
        or _is_mobile_signature(line)
    )


def header_role(line: str) -> str | None:
    """The role ("from", "date", …) of a header line such as "Inviato: lunedì …", if it is one."""
    match = _HEADER_LINE.match(line)
    return _HEADER_ROLES.get(match.group(1).lower()) if match else None


def is_rule(line: str) -> bool:
    """A line that introduces a header block: a rule, or "-----Messaggio originale-----"."""
    return len(line) <= MAX_HEADER_LINE and bool(
        _UNDERSCORE_RULE.match(line)
        or _DASH_RULE.match(line)
        or _STAR_RULE.match(line)
        or ORIGINAL_SEPARATOR.match(line)
        or _DASHED_TITLE.match(line)
    )


def inline_header_roles(line: str) -> set[str]:
    """Roles of the headers Outlook ran together on one line ("Da: … Inviato: … A: …")."""
    return {_HEADER_ROLES[m.group(1).lower()] for m in _INLINE_HEADER.finditer(line)}


def ends_quote(line: str) -> bool:
    """True when the line above an unquoted line closes the quote rather than being wrapped.

    A client that wraps a long quoted line leaves the continuation unquoted; an answer written
    under a short or finished quoted line is the author's own text.
    """
    if is_blank(line) or _BARE_QUOTE.match(line):
        return True
    content = line.rstrip()
    return len(content) < _WRAP_SUSPECT or content.endswith((".", "?", "!", ":", ";", ")"))
