"""core.validation.pii: every kind found where it is, validated (Luhn, mod 97), masked, and not found elsewhere."""

from __future__ import annotations

import pytest

from core.validation import pii


def kinds(text: str) -> list[tuple[str, str]]:
    return [(f.kind, text[f.start : f.end]) for f in pii.find_pii(text)]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("write to john.doe@example.com.", "john.doe@example.com"),
        ("<a.b-c+tag@mail.co.uk>", "a.b-c+tag@mail.co.uk"),
    ],
)
def test_email_positive(text: str, value: str) -> None:
    assert kinds(text) == [("email", value)]


@pytest.mark.parametrize("text", ["@handle", "user@localhost", "a@b", "name at example dot com", "x@1.2.3.4"])
def test_email_negative(text: str) -> None:
    assert kinds(text) == []


@pytest.mark.parametrize(
    "value", ["4111 1111 1111 1111", "4111-1111-1111-1111", "5555555555554444", "3782 822463 10005", "6011000990139424"]
)
def test_card_positive_luhn_valid(value: str) -> None:
    assert kinds(f"paid with {value} today") == [("card", value)]


@pytest.mark.parametrize(
    "value",
    [
        "4111 1111 1111 1112",  # Luhn fails
        "5555555555554443",  # Luhn fails
        "1234567812345670",  # Luhn passes, but no card network starts with 1
        "4111 1111-1111 1111",  # mixed separators
        "0000 0000 0000 0000",
    ],
)
def test_card_negative(value: str) -> None:
    assert [k for k, _ in kinds(f"number {value} here")] != ["card"]


def test_luhn() -> None:
    assert pii.luhn_valid("79927398713")
    assert not pii.luhn_valid("79927398710")


@pytest.mark.parametrize(
    "value",
    [
        "DE89 3704 0044 0532 0130 00",
        "GB82WEST12345698765432",
        "FR14 2004 1010 0505 0001 3M02 606",
        "NL91ABNA0417164300",
    ],
)
def test_iban_positive_mod97(value: str) -> None:
    assert kinds(f"IBAN: {value}.") == [("iban", value)]


@pytest.mark.parametrize(
    "value",
    [
        "DE89 3704 0044 0532 0130 01",  # check digits fail
        "GB82WEST12345698765433",
        "DE89 3704 0044 0532 0130",  # too short for Germany
        "ZZ12 3456 7890 1234 56",  # no such country
    ],
)
def test_iban_negative(value: str) -> None:
    assert [k for k, _ in kinds(f"IBAN: {value}.")] != ["iban"]
    assert not any(k == "iban" for k, _ in kinds(value))


@pytest.mark.parametrize(
    "value",
    [
        "+44 20 7946 0958",
        "+1 (415) 555-2671",
        "+33612345678",
        "(415) 555-2671",
        "415-555-2671",
        "415.555.2671",
        "1-800-555-0199",
        "020 7946 0958",
        "01 23 45 67 89",
        "030-1234-5678",
    ],
)
def test_phone_positive(value: str) -> None:
    assert kinds(f"call {value} now") == [("phone", value)]


@pytest.mark.parametrize(
    "value",
    [
        "1234567890",  # a bare digit run
        "20240115",
        "2024-01-15",  # dates
        "15/01/2024",
        "01.02.2024",
        "1.2.3",  # versions
        "v10.4.1",
        "3.11.7",
        "192.168.0.1",  # addresses of machines
        "10.0.0.1",
        "123-456-7890",  # area codes never start with 1
        "555-1234",  # no area code
        "+12",
        "ISBN 978-3-16-148410-0",
        "pi is 3.14159265358979",
    ],
)
def test_phone_negative(value: str) -> None:
    assert kinds(f"see {value} here") == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Send it to 123 Main Street please", [("address", "123 Main Street")]),
        ("Meet at 9 W 42nd St, Apt 5 at noon", [("address", "9 W 42nd St, Apt 5")]),
        ("1600 Pennsylvania Avenue NW", [("address", "1600 Pennsylvania Avenue")]),
        ("Springfield, IL 62704", [("postcode", "IL 62704")]),
        ("London SW1A 1AA", [("postcode", "SW1A 1AA")]),
        ("Ottawa, ON K1A 0B1", [("postcode", "K1A 0B1")]),
    ],
)
def test_address_positive(text: str, expected: list[tuple[str, str]]) -> None:
    assert kinds(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "I walked 3 miles down the street",  # lower case, no street name
        "Chapter 12 covers main street economics",
        "The 62704 people in IL voted",  # a ZIP needs ", ST 12345"
        "Order 12345 shipped",
        "Use model A1 2BC for this",  # not a UK postcode (C cannot end one)
    ],
)
def test_address_negative(text: str) -> None:
    assert kinds(text) == []


def test_findings_are_masked_and_never_raw() -> None:
    text = "Mail john.doe@example.com, card 4111 1111 1111 1111, IBAN DE89 3704 0044 0532 0130 00, +44 20 7946 0958"
    result, findings = pii.pii([text, "nothing here"])
    masked = {f.kind: f.masked for f in findings[0]}
    assert masked == {
        "email": "j***@e***.com",
        "card": "**** **** **** 1111",
        "iban": "DE** **** **** **** **30 00",
        "phone": "+** ** **** **58",
    }
    for finding in findings[0]:
        assert text[finding.start : finding.end] != finding.masked
    assert result.items == [4, 0]
    assert result.corpus["items_with_pii"] == 1  # type: ignore[index]
    assert result.corpus["by_kind"]["card"] == 1  # type: ignore[index]
