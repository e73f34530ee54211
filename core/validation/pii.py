"""Personal data in generated text: e-mails, phones, cards (Luhn), IBANs (mod 97), addresses, postcodes."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from core.validation.result import MetricResult

KINDS = ("email", "iban", "card", "phone", "address", "postcode")


@dataclass(frozen=True, slots=True)
class PiiFinding:
    kind: str
    start: int
    end: int
    masked: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def mask(value: str, keep_start: int = 0, keep_end: int = 0) -> str:
    """Letters and digits become ``*`` except the first ``keep_start`` and last ``keep_end`` of them."""
    positions = [i for i, ch in enumerate(value) if ch.isalnum()]
    hidden = set(positions[keep_start : len(positions) - keep_end])
    return "".join("*" if i in hidden else ch for i, ch in enumerate(value))


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return len(digits) > 1 and total % 10 == 0


def iban_valid(compact: str) -> bool:
    """Country length and ISO 13616 mod-97 (move the first four to the end, letters to 10..35)."""
    if IBAN_LENGTHS.get(compact[:2]) != len(compact) or not compact[2:4].isdigit():
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


# fmt: off
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BI": 27, "BR": 29,
    "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27, "DK": 18, "DO": 28, "EE": 20, "EG": 29,
    "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28,
    "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28,
    "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20,
    "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24, "PL": 28, "PS": 29, "PT": 25,
    "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27,
    "SO": 23, "ST": 25, "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}
_STATES = (
    "AL|AK|AZ|AR|CA|CO|CT|DE|DC|FL|GA|HI|ID|IL|IN|IA|KS|KY|LA|ME|MD|MA|MI|MN|MS|MO|MT|NE|NV|NH|NJ|NM|NY|NC|ND|OH|OK|"
    "OR|PA|RI|SC|SD|TN|TX|UT|VT|VA|WA|WV|WI|WY|PR"
)
_STREET_TYPES = (
    "Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Place|Pl|Terrace|Way|Parkway|Pkwy|"
    "Circle|Cir|Highway|Hwy|Square|Sq|Trail|Plaza"
)
# fmt: on
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_EMAIL = re.compile(
    rf"(?<![\w.@]){_ATEXT}+(?:\.{_ATEXT}+)*@(?P<domain>(?:[A-Za-z0-9](?:[A-Za-z0-9-]{{0,61}}[A-Za-z0-9])?\.)+"
    r"[A-Za-z]{2,63})(?![\w@-])"
)
_CARD = re.compile(r"(?<![\w.,-])\d(?:[ -]?\d){12,18}(?![\w]|[.,-]\d)")
_IBAN_START = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}")
_AFTER_NUMBER = r"(?![\w]|[.,/:-]\d)"
_PHONE_PATTERNS = (
    # E.164 with optional separators: +44 20 7946 0958, +1 (415) 555-2671, +33612345678
    re.compile(r"(?<![\w+])\+[1-9]\d{0,3}(?:[ .-]?(?:\(\d{1,4}\)|\d{1,5})){1,6}" + _AFTER_NUMBER),
    # North America: (415) 555-2671, 415-555-2671, 1-800-555-0199, 415.555.2671 (one separator throughout)
    re.compile(
        r"(?<![\w+.,/-])(?:1([ .-]))?(?:\([2-9]\d{2}\) ?|[2-9]\d{2}(?P<sep>[ .-]))[2-9]\d{2}(?(sep)(?P=sep)|[ .-])\d{4}"
        + _AFTER_NUMBER
    ),
    # Trunk-prefix national numbers with one kind of separator: 020 7946 0958, 01 23 45 67 89, 030-1234567
    re.compile(r"(?<![\w+.,/-])0\d{1,4}(?P<s>[ .-])\d{2,4}(?:(?P=s)\d{2,4}){0,3}" + _AFTER_NUMBER),
)
_ADDRESS = re.compile(
    r"(?<![\w.,-])\d{1,6}[A-Z]?(?: (?:N|S|E|W|NE|NW|SE|SW|North|South|East|West)\.?)?"
    rf"(?: (?:[A-Z][a-z]+|\d+(?:st|nd|rd|th))){{1,3}} (?P<type>{_STREET_TYPES})\b\.?"
    r"(?:,? (?:Apt|Apartment|Suite|Ste|Unit|#)\.? ?[A-Za-z0-9-]+)?"
)
_POSTCODES = (
    re.compile(rf"(?<=,) ?(?P<code>(?:{_STATES}) \d{{5}}(?:-\d{{4}})?)(?![\w-])"),  # US ZIP after ", IL"
    re.compile(
        r"(?<![\w-])(?P<code>(?:[A-PR-UWYZ]\d[\dA-HJKPS-UW]?|[A-PR-UWYZ][A-HK-Y]\d[\dABEHMNPRV-Y]?)"
        r" \d[ABD-HJLNP-UW-Z]{2})(?![\w-])"
    ),  # UK: SW1A 1AA, M1 1AE
    re.compile(r"(?<![\w-])(?P<code>[ABCEGHJ-NPRSTVXY]\d[ABCEGHJ-NPRSTV-Z] \d[ABCEGHJ-NPRSTV-Z]\d)(?![\w-])"),  # Canada
)
_IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")


def _emails(text: str) -> Iterator[PiiFinding]:
    for m in _EMAIL.finditer(text):
        local, domain = m[0].rsplit("@", 1)
        if len(local) > 64 or len(domain) > 253:
            continue
        tld = domain.rsplit(".", 1)[1]
        yield PiiFinding("email", m.start(), m.end(), f"{local[0]}***@{domain[0]}***.{tld}")


def _card_network(digits: str) -> bool:
    """A prefix and length that a card network issues (Visa, Mastercard, Amex, Discover, Diners, JCB, UnionPay)."""
    n = len(digits)
    if digits[0] == "4":
        return n in (13, 16, 19)
    if digits[:2] in ("34", "37"):
        return n == 15
    if "51" <= digits[:2] <= "55" or "2221" <= digits[:4] <= "2720":
        return n == 16
    if digits[:2] in ("30", "36", "38", "39"):
        return 14 <= n <= 19
    return digits[0] in "356" and 16 <= n <= 19  # JCB 35, Maestro 5x/6x, Discover 6011/65, UnionPay 62


def _cards(text: str) -> Iterator[PiiFinding]:
    for m in _CARD.finditer(text):
        raw = m[0]
        separators = {ch for ch in raw if not ch.isdigit()}
        groups = re.split(r"[ -]", raw)
        if len(separators) > 1 or (separators and (len(groups[0]) != 4 or max(map(len, groups)) > 6)):
            continue
        digits = "".join(groups)
        if _card_network(digits) and luhn_valid(digits):
            yield PiiFinding("card", m.start(), m.end(), mask(raw, keep_end=4))


def _ibans(text: str) -> Iterator[PiiFinding]:
    for m in _IBAN_START.finditer(text):
        length = IBAN_LENGTHS.get(m[0][:2])
        if length is None:
            continue
        chars: list[str] = []
        pos = m.start()
        while pos < len(text) and len(chars) < length:
            ch = text[pos]
            if ch.isascii() and (ch.isdigit() or ch.isupper()):
                chars.append(ch)
            elif not (ch == " " and len(chars) % 4 == 0 and pos + 1 < len(text) and text[pos + 1].isalnum()):
                break
            pos += 1
        if len(chars) == length and not (pos < len(text) and text[pos].isalnum()) and iban_valid("".join(chars)):
            yield PiiFinding("iban", m.start(), pos, mask(text[m.start() : pos], keep_start=2, keep_end=4))


def _phones(text: str) -> Iterator[PiiFinding]:
    for pattern in _PHONE_PATTERNS:
        for m in pattern.finditer(text):
            raw = m[0]
            digits = sum(ch.isdigit() for ch in raw)
            low, high = (8, 15) if raw.startswith("+") else (10, 12) if raw.startswith("0") else (10, 11)
            if low <= digits <= high and not _IPV4.fullmatch(raw):
                yield PiiFinding("phone", m.start(), m.end(), mask(raw, keep_end=2))


def _addresses(text: str) -> Iterator[PiiFinding]:
    for m in _ADDRESS.finditer(text):
        start, end = m.span("type")
        masked = mask(text[m.start() : start]) + text[start:end] + mask(text[end : m.end()])
        yield PiiFinding("address", m.start(), m.end(), masked)


def _postcodes(text: str) -> Iterator[PiiFinding]:
    for pattern in _POSTCODES:
        for m in pattern.finditer(text):
            start, end = m.span("code")
            yield PiiFinding("postcode", start, end, mask(m["code"], keep_start=2 if pattern is _POSTCODES[0] else 1))


#: In priority order: a span claimed by an earlier detector is not reported again by a later one.
DETECTORS: tuple[Callable[[str], Iterator[PiiFinding]], ...] = (
    _emails,
    _ibans,
    _cards,
    _phones,
    _addresses,
    _postcodes,
)


def find_pii(text: str) -> list[PiiFinding]:
    """Every finding in ``text``, by position; overlapping matches keep the higher-priority kind.

    Each detector matches a shape and then validates it, to keep false positives down: cards must pass
    Luhn and carry a card-network prefix and length, IBANs their country's length and the mod-97 check;
    phones need a ``+`` country code, the North American 3-3-4 shape or a trunk ``0`` with one kind of
    separator (bare digit runs, dates, versions and IP addresses are not phones). Addresses are US street
    lines ("123 Main Street", "9 W 42nd St, Apt 5"); postcodes only where their shape is distinctive: a US
    ZIP after ", <state>", UK and Canadian postcodes. A finding carries its kind, its character span and
    a masked copy of the match: the raw value never leaves this module.
    """
    taken: list[tuple[int, int]] = []
    found: list[PiiFinding] = []
    for detector in DETECTORS:
        for finding in detector(text):
            if any(finding.start < end and start < finding.end for start, end in taken):
                continue
            taken.append((finding.start, finding.end))
            found.append(finding)
    return sorted(found, key=lambda f: f.start)


def pii(candidates: Sequence[str]) -> tuple[MetricResult, list[list[PiiFinding]]]:
    """Items: findings per candidate. Corpus: candidates with any, their share, and counts by kind."""
    findings = [find_pii(c) for c in candidates]
    by_kind = dict.fromkeys(KINDS, 0)
    for item in findings:
        for finding in item:
            by_kind[finding.kind] += 1
    flagged = sum(1 for item in findings if item)
    corpus = {
        "items_with_pii": flagged,
        "share": flagged / len(candidates) if candidates else 0.0,
        "findings": sum(by_kind.values()),
        "by_kind": by_kind,
    }
    return MetricResult(corpus, [len(item) for item in findings]), findings
