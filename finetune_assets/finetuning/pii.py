"""Personal data in post text: e-mail addresses, payment cards, phone numbers and US social security numbers.

It runs on every candidate post, so each rule must be right about ordinary text: a date, an ISBN, a serial or an
order number is not personal data, and dropping its post loses a good example. Cards must have a known issuer
prefix and length and pass the Luhn checksum; phones must parse as a valid number (Google's libphonenumber, via
`phonenumbers`); SSNs must not use an area, group or serial the SSA never issues. The expensive matchers only
run on text with an `@` or a run of at least seven digits.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import NamedTuple

DEFAULT_REGION = "US"
"""Where a phone number written without a country code is taken to be (ISO 3166 alpha-2)."""

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")
# Implied by every card, phone and SSN: seven digits, at most three non-word characters apart. It starts with a
# plain \d, which the regex engine scans for quickly (a leading lookbehind is tried at every position).
_LONG_NUMBER = re.compile(r"\d(?:\W{0,3}\d){6,}")
_DIGIT_RUN = re.compile(r"\d+(?:[ -]\d+)*")
_SSN = re.compile(r"(?<![\d-])(\d{3})-(\d{2})-(\d{4})(?![\d-])")
# A number right after one of these is a reference, not a phone: "order #4155550199", "ISBN 0-306-40615-2".
_REFERENCE_LABEL = re.compile(
    r"(?:(?:^|\s)#|\b(?:isbn(?:-1[03])?|issn|sku|serial|s/n|tracking)"
    r"|\b(?:order|invoice|booking|reservation|confirmation|ticket|case|ref|reference|item|part|model)"
    r"\s*(?:no\.?|nr\.?|number|num\.?|id|#))\s*[:.]?\s*$",
    re.IGNORECASE,
)
_LABEL_WINDOW = 40


class CardRule(NamedTuple):
    """Issuer identification numbers `low`..`high` (as the first `prefix_digits` digits) and the lengths issued."""

    brand: str
    prefix_digits: int
    low: int
    high: int
    lengths: frozenset[int]


_CARD_RULES = (
    CardRule("visa", 1, 4, 4, frozenset({13, 16, 19})),
    CardRule("mastercard", 2, 51, 55, frozenset({16})),
    CardRule("mastercard", 4, 2221, 2720, frozenset({16})),
    CardRule("amex", 2, 34, 34, frozenset({15})),
    CardRule("amex", 2, 37, 37, frozenset({15})),
    CardRule("discover", 4, 6011, 6011, frozenset(range(16, 20))),
    CardRule("discover", 2, 65, 65, frozenset(range(16, 20))),
    CardRule("discover", 3, 644, 649, frozenset(range(16, 20))),
    CardRule("jcb", 4, 3528, 3589, frozenset(range(16, 20))),
    CardRule("diners", 2, 36, 36, frozenset({14})),
    CardRule("diners", 2, 38, 38, frozenset({14})),
    CardRule("diners", 3, 300, 305, frozenset({14})),
    CardRule("unionpay", 2, 62, 62, frozenset(range(16, 20))),
)
CARD_LENGTHS = range(13, 20)


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) checksum every payment card number carries in its last digit."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def card_brand(digits: str) -> str | None:
    """The issuer whose prefix and length `digits` has, if any (no checksum)."""
    for rule in _CARD_RULES:
        if len(digits) in rule.lengths and rule.low <= int(digits[: rule.prefix_digits]) <= rule.high:
            return rule.brand
    return None


def is_card_number(digits: str) -> bool:
    return card_brand(digits) is not None and luhn_valid(digits)


def _card_candidates(text: str) -> Iterator[str]:
    """Every run of consecutive digit groups (split by one space or hyphen) with a card's length: a card next to
    other numbers ("4111 1111 1111 1111 12/27") is still found, a longer unbroken serial is not cut into one."""
    for run in _DIGIT_RUN.finditer(text):
        groups = re.split(r"[ -]", run.group())
        for start in range(len(groups)):
            digits = ""
            for group in groups[start:]:
                digits += group
                if len(digits) > CARD_LENGTHS[-1]:
                    break
                if len(digits) in CARD_LENGTHS:
                    yield digits


def has_card(text: str) -> bool:
    return any(is_card_number(digits) for digits in _card_candidates(text))


def is_ssn(area: str, group: str, serial: str) -> bool:
    """Never issued: area 000, 666 or 900-999, group 00, serial 0000."""
    return area != "000" and area != "666" and area[0] != "9" and group != "00" and serial != "0000"


def has_ssn(text: str) -> bool:
    return any(is_ssn(*m.groups()) for m in _SSN.finditer(text))


def has_phone(text: str, region: str = DEFAULT_REGION) -> bool:
    """A valid phone number (libphonenumber's VALID leniency: a real number plan, not a date or a price) that is
    not labelled as a reference number."""
    import phonenumbers  # 40 ms of metadata: loaded on the first number-like text, not with the definitions

    for match in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID):
        if not _REFERENCE_LABEL.search(text[max(0, match.start - _LABEL_WINDOW) : match.start]):
            return True
    return False


def pii_kinds(text: str, region: str = DEFAULT_REGION) -> list[str]:
    """The kinds of personal data in `text`, of "email", "card", "phone", "ssn" (for reports and tests)."""
    kinds = []
    if "@" in text and _EMAIL.search(text):
        kinds.append("email")
    if _LONG_NUMBER.search(text):
        checks = (("card", has_card), ("phone", lambda t: has_phone(t, region)), ("ssn", has_ssn))
        kinds.extend(kind for kind, check in checks if check(text))
    return kinds


def contains_pii(text: str, region: str = DEFAULT_REGION) -> bool:
    """Whether `text` holds an e-mail address, a payment card, a phone number or a US SSN."""
    if "@" in text and _EMAIL.search(text):
        return True
    if not _LONG_NUMBER.search(text):
        return False
    return has_ssn(text) or has_card(text) or has_phone(text, region)
