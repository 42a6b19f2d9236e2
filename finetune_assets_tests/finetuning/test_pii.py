"""The PII filter against a labelled corpus of post text: recall on every kind, few good posts lost.

Card numbers are the issuers' published test numbers; phone numbers are in valid number ranges but fictional
where a fictional range exists. `pytest -s` prints the precision/recall table.
"""

from __future__ import annotations

import pytest

from finetune_assets.finetuning.dataset import Limits, RejectReason, ValidPost, validate_post
from finetune_assets.finetuning.pii import (
    DEFAULT_REGION,
    card_brand,
    contains_pii,
    has_phone,
    is_card_number,
    luhn_valid,
    pii_kinds,
)

KINDS = ("email", "card", "phone", "ssn")

POSITIVES: list[tuple[str, set[str]]] = [
    # e-mail
    ("Questions? Write to jane.doe@example.com and we'll get back to you.", {"email"}),
    ("DM us or email orders+pickup@harborbakehouse.co.uk for custom cakes 🎂", {"email"}),
    ("Our new manager is tom_b@bluebird-cycles.com, say hi!", {"email"}),
    ("RSVP: events@maple.bike.works.org", {"email"}),
    ("Contact m.garcía@correo.es para reservar", {"email"}),
    ("Send your photos to photos@shop.example and win a tote bag!", {"email"}),
    ("Email SALES@EXAMPLE.COM before Friday.", {"email"}),
    ("Reach Anna at anna.k@example.org or call 212-555-0143.", {"email", "phone"}),
    ("Winner announced! Claim your prize at win2026@example.net #Giveaway", {"email"}),
    ("Cc: a@b.io", {"email"}),
    # payment cards (test numbers), with and without separators
    ("Card on file: 4111 1111 1111 1111, exp 12/27", {"card"}),
    ("Paid with 4012888888881881 yesterday", {"card"}),
    ("Old visa 4222222222222 still works??", {"card"}),
    ("Visa 19-digit 4111111111111111110 test", {"card"}),
    ("MC 5555-5555-5555-4444 cvv 123", {"card"}),
    ("My card 5105 1051 0510 5100 was declined at the register", {"card"}),
    ("New Mastercard range 2221 0000 0000 0009", {"card"}),
    ("Amex 3782 822463 10005 for the deposit", {"card"}),
    ("Use 371449635398431 for the order", {"card"}),
    ("Discover 6011 1111 1111 1117 on the invoice", {"card"}),
    ("card: 6500000000000002", {"card"}),
    ("Discover 6445 6445 6445 6445 accepted", {"card"}),
    ("JCB 3530 1113 3330 0000 please", {"card"}),
    ("JCB 3530111333300000001 (19 digits)", {"card"}),
    ("Diners Club 3056 930902 5904", {"card"}),
    ("Diners 38520000023237 was charged twice", {"card"}),
    ("UnionPay 6200 0000 0000 0005 at checkout", {"card"}),
    ("Paid 6250941006528599, receipt attached", {"card"}),
    # phone numbers: US formats and international
    ("Call +1 (415) 555-0199 now", {"phone"}),
    ("Book a table: (212) 555-0143", {"phone"}),
    ("Text 650-253-0000 for the daily special", {"phone"}),
    ("Our hotline 202.456.1111 is open 24/7", {"phone"}),
    ("Ring 4155550199 and ask for Sam", {"phone"}),
    ("Toll free: 1-800-356-9377", {"phone"}),
    ("London shop: +44 20 7946 0958", {"phone"}),
    ("Berlin: +49 30 901820, Mon-Fri", {"phone"}),
    ("Paris +33 1 42 68 53 00 🇫🇷", {"phone"}),
    ("India office +91 98765 43210", {"phone"}),
    ("Tokyo +81 3-1234-5678 (JP)", {"phone"}),
    ("Sydney +61 2 9876 5432", {"phone"}),
    ("WhatsApp me on +1 212-555-0143 after 6", {"phone"}),
    ("ph# 415 555 0199", {"phone"}),
    # US social security numbers
    ("My SSN is 078-05-1120, please update the form", {"ssn"}),
    ("ssn 123-45-6789", {"ssn"}),
    ("Employee 536-22-1234 onboarding", {"ssn"}),
    ("SSN: 219-09-9999.", {"ssn"}),
]

NEGATIVES: list[str] = [
    # dates and times
    "Our sale ends 2026-12-07 at midnight!",
    "See you on 12/07/2026 for the holiday market 🎄",
    "From 12/07/2026 - 01/15/2027 we open late.",
    "Workshop dates: 12.07.2026 and 19.07.2026",
    "Doors 7:30 pm, show 8:15 pm, done by 10:30-11:45",
    "Open Mon-Fri 9-5, Sat 10-4",
    "The 2019-2024 seasons in numbers",
    # ISBNs, with and without hyphens
    "Book club pick: ISBN 978-0-306-40615-7",
    "ISBN-13: 978-1-4028-9462-6, out now",
    "ISBN 0-306-40615-2 (paperback)",
    "isbn 0306406152",
    "Scan 9780306406157 at the till",
    "ISBN 3-16-148410-X",
    "1-56619-909-3 is the old edition",
    # long serials, failed checksums, order and reference numbers
    "Serial 4000123456789012345 registered",
    "SN 1234567890123456789 under warranty",
    "Ref 4111 1111 1111 1112 (not a card)",
    "Voucher 5555-5555-5555-4445 expired",
    "Order #4155550199 has shipped!",
    "order no. 2125550143 is ready for pickup",
    "Order 20261207-0042 confirmed",
    "Invoice #2024-000123 attached",
    "Tracking 1Z999AA10123456784",
    "Batch 20261207 lot 004512",
    "Model XR-2000-5521 back in stock",
    # prices, counts, places, versions
    "Only $1,299.99 today, was $1,499.00",
    "Price: 19.99 USD, was 24.99 🙌",
    "We sold 1,234,567 loaves this year!",
    "Ship to zip 94103-1234",
    "Find us at 37.7749, -122.4194",
    "Server moved to 192.168.1.254",
    "v2.14.3 released with bug fixes",
    "Room 1204, floor 12",
    "Score 3-2 in overtime!",
    "3 reasons to love the spring seedling sale:\n1. Herb planters\n2. Bright light\n3. Drainage",
    # shapes like an SSN that the SSA never issues, numbers too short for a phone
    "Form 000-12-3456 is a sample",
    "Code 666-12-3456 on the ticket",
    "ITIN 912-70-1234 example",
    "Template 123-00-4567",
    "Template 123-45-0000",
    "Call 555-0199 (no area code)",
    # @ that is not an address
    "Follow @harbor.bakehouse for more",
    "Meet us @ 5pm by the pier",
    "Shoutout to @BluebirdCycles and @MapleBikeWorks!",
    "Emails are name@domain, not a real one",
]


def test_the_corpus_is_large_enough_to_mean_something() -> None:
    assert len(POSITIVES) >= 40 and len(NEGATIVES) >= 40
    for kind in KINDS:
        assert sum(kind in kinds for _, kinds in POSITIVES) >= 4, kind


def table() -> dict[str, tuple[int, int, int]]:
    """Per kind: true positives, false positives, false negatives over the whole corpus."""
    labelled = [*POSITIVES, *((text, set()) for text in NEGATIVES)]
    counts = {}
    for kind in KINDS:
        tp = fp = fn = 0
        for text, kinds in labelled:
            found = kind in pii_kinds(text)
            tp += found and kind in kinds
            fp += found and kind not in kinds
            fn += not found and kind in kinds
        counts[kind] = (tp, fp, fn)
    return counts


def test_recall_is_complete_on_every_kind_and_precision_high() -> None:
    counts = table()
    flagged = [text for text in (*(t for t, _ in POSITIVES), *NEGATIVES) if contains_pii(text)]
    true_flagged = sum(text not in NEGATIVES for text in flagged)
    overall_precision = true_flagged / len(flagged)
    overall_recall = true_flagged / len(POSITIVES)
    print(f"\n{'kind':<6} {'tp':>4} {'fp':>4} {'fn':>4} {'precision':>10} {'recall':>8}")
    for kind, (tp, fp, fn) in counts.items():
        print(f"{kind:<6} {tp:>4} {fp:>4} {fn:>4} {tp / max(tp + fp, 1):>10.3f} {tp / max(tp + fn, 1):>8.3f}")
    print(f"{'any':<6} {true_flagged:>4} {len(flagged) - true_flagged:>4} {len(POSITIVES) - true_flagged:>4} "
          f"{overall_precision:>10.3f} {overall_recall:>8.3f}")  # fmt: skip
    missed = [(text, kinds) for text, kinds in POSITIVES if not kinds <= set(pii_kinds(text))]
    assert missed == [], "missed personal data"
    assert {kind: fn for kind, (_, _, fn) in counts.items()} == dict.fromkeys(KINDS, 0)
    assert overall_precision >= 0.95, [text for text in flagged if text in NEGATIVES]


@pytest.mark.parametrize("text", NEGATIVES)
def test_a_good_post_with_numbers_is_not_lost(text: str) -> None:
    row = {"post_id": 1, "prompt_messages": '[{"role": "user", "content": "A post."}]', "completion": text}
    outcome = validate_post({**row, "impressions": 100, "engagements": 9}, Limits(8000, 4000, 1024))
    assert isinstance(outcome, ValidPost), outcome


@pytest.mark.parametrize(("text", "kinds"), POSITIVES)
def test_a_post_with_personal_data_is_excluded_as_pii(text: str, kinds: set[str]) -> None:
    row = {"post_id": 1, "prompt_messages": '[{"role": "user", "content": "A post."}]', "completion": text}
    outcome = validate_post({**row, "impressions": 100, "engagements": 9}, Limits(8000, 4000, 1024))
    assert outcome == RejectReason.PII


def test_cards_need_a_known_issuer_length_and_the_luhn_checksum() -> None:
    assert luhn_valid("79927398713") and not luhn_valid("79927398710")
    assert card_brand("4111111111111111") == "visa" and is_card_number("4111111111111111")
    assert card_brand("41111111111111111") is None, "17 digits: no Visa card has that length"
    assert not is_card_number("4111111111111112"), "right issuer and length, wrong checksum"
    assert card_brand("9780306406157") is None, "an ISBN-13 passes its own checksum, not an issuer's prefix"
    assert card_brand("2720990000000007") == "mastercard" and card_brand("2721000000000006") is None
    assert card_brand("30569309025904") == "diners" and card_brand("30669309025903") is None


def test_phone_numbers_are_read_in_the_default_region_unless_told() -> None:
    assert DEFAULT_REGION == "US"
    assert has_phone("ring 020 7946 0958") is False, "not a US number"
    assert has_phone("ring 020 7946 0958", region="GB") is True
    assert contains_pii("ring 020 7946 0958", region="GB")
