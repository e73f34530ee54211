"""The multipart/form-data parser: what HTTP clients send, and every way a body can be broken."""

from __future__ import annotations

import pytest

from core.errors import InvalidRequest
from core.multipart import boundary_of, form_fields, header_params, parse_multipart
from tests.fakes import multipart

CT = "multipart/form-data; boundary=b0undary"


def test_fields_and_a_file_as_clients_send_them() -> None:
    body = multipart({"purpose": "batch"}, {"file": ("in.jsonl", b'{"a": 1}\r\n{"b": 2}\n')})
    parts = parse_multipart(body, CT)
    assert [p.name for p in parts] == ["purpose", "file"]
    assert parts[0].text() == "batch"
    assert parts[0].filename is None
    assert parts[1].filename == "in.jsonl"
    assert parts[1].content_type == "application/octet-stream"
    assert parts[1].data == b'{"a": 1}\r\n{"b": 2}\n'  # the content's own line breaks are kept


def test_binary_content_with_crlf_and_lookalike_boundaries_is_kept_byte_for_byte() -> None:
    content = bytes(range(256)) * 4 + b"\r\n--b0undar\r\n-b0undary\r\n--B0UNDARY\r\n"
    parts = parse_multipart(multipart({}, {"file": ("x.bin", content)}), CT)
    assert parts[0].data == content


def test_empty_file_and_empty_value() -> None:
    parts = parse_multipart(multipart({"purpose": ""}, {"file": ("e.jsonl", b"")}), CT)
    assert [(p.name, p.data) for p in parts] == [("purpose", b""), ("file", b"")]


def test_preamble_epilogue_lf_only_and_transport_padding() -> None:
    body = (
        b"this is a preamble\r\n"
        b"--b0undary  \t\n"
        b'Content-Disposition: form-data; name="a"\n\n'
        b"one\n"
        b"--b0undary\r\n"
        b'content-disposition: form-data; name="b"\r\n\r\n'
        b"two\r\n"
        b"--b0undary--\r\nepilogue ignored"
    )
    parts = parse_multipart(body, CT)
    assert [(p.name, p.data) for p in parts] == [("a", b"one"), ("b", b"two")]


def test_quoted_boundary_and_header_parameters() -> None:
    assert boundary_of('multipart/form-data; charset=utf-8; boundary="a b:c"') == b"a b:c"
    assert boundary_of("Multipart/Form-Data;boundary=xyz") == b"xyz"
    kind, params = header_params('form-data; name="fi\\"le"; filename="a;b.jsonl"')
    assert kind == "form-data"
    assert params == {"name": 'fi"le', "filename": "a;b.jsonl"}
    _, params = header_params("form-data; name=file; filename=\"plain.txt\"; filename*=UTF-8''na%C3%AFve.jsonl")
    assert params["filename"] == "naïve.jsonl"


@pytest.mark.parametrize(
    "content_type",
    [None, "application/json", "multipart/form-data", "multipart/form-data; boundary=", "text/plain; boundary=x"],
)
def test_content_type_must_be_multipart_with_a_boundary(content_type: str | None) -> None:
    with pytest.raises(InvalidRequest):
        parse_multipart(b"--x\r\n", content_type)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"", "no part"),
        (b"nothing here", "no part"),
        (b'--b0undary\r\nContent-Disposition: form-data; name="a"\r\n\r\nnever closed', "closing boundary"),
        (b"--b0undary\r\nContent-Disposition: form-data; name=a", "headers do not end"),
        (b"--b0undaryjunk\r\n\r\n--b0undary--", "line break"),
        (b"--b0undary\r\nContent-Type: text/plain\r\n\r\nx\r\n--b0undary--", "Content-Disposition"),
        (b"--b0undary\r\nno colon here\r\n\r\nx\r\n--b0undary--", "malformed header"),
        (b"--b0undary\r\nContent-Disposition: attachment; name=a\r\n\r\nx\r\n--b0undary--", "form-data"),
    ],
)
def test_broken_bodies_are_400s(body: bytes, fragment: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_multipart(body, CT)
    assert fragment in caught.value.message
    assert caught.value.status == 400


def test_too_many_parts_and_duplicate_fields() -> None:
    many = multipart({f"f{i}": "v" for i in range(40)}, {})
    with pytest.raises(InvalidRequest, match="too many"):
        parse_multipart(many, CT)
    twice = b"".join(b'--b0undary\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n' for _ in range(2))
    with pytest.raises(InvalidRequest, match="more than once"):
        form_fields(parse_multipart(twice + b"--b0undary--", CT))


def test_non_utf8_text_field_is_a_400() -> None:
    parts = parse_multipart(multipart({}, {"purpose": ("p", b"\xff\xfe")}), CT)
    with pytest.raises(InvalidRequest, match="not UTF-8"):
        parts[0].text()


def test_headers_that_never_end_are_bounded() -> None:
    body = b"--b0undary\r\nX-Long: " + b"a" * 100_000 + b"\r\n\r\nx\r\n--b0undary--"
    with pytest.raises(InvalidRequest, match="too long"):
        parse_multipart(body, CT)


def test_a_part_without_headers_is_a_400_not_a_misparse() -> None:
    body = b'--b0undary\r\n\r\ndata\r\n--b0undary\r\nContent-Disposition: form-data; name="a"\r\n\r\nx\r\n--b0undary--'
    with pytest.raises(InvalidRequest, match="Content-Disposition"):
        parse_multipart(body, CT)
