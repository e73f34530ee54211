"""``multipart/form-data`` request bodies (RFC 7578), parsed from bytes with the standard library only."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote

from core.errors import InvalidRequest

MAX_PARTS = 32
MAX_HEADER_BYTES = 16 * 1024
# A parameter of a header value: ``name=token``, ``name="quoted \" string"`` or ``name*=utf-8''enc%20oded``.
_PARAM = re.compile(r';\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+\*?)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
_NO_HEADERS = re.compile(rb"\r?\n")
_BOUNDARY_CHARS = re.compile(r"^[0-9A-Za-z'()+_,\-./:=? ]{1,70}$")


@dataclass(frozen=True, slots=True)
class Part:
    """One field of the form: a plain value, or a file when it has a ``filename``."""

    name: str
    data: bytes
    filename: str | None = None
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def text(self) -> str:
        try:
            return self.data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequest(f"the form field '{self.name}' is not UTF-8 text", param=self.name) from None


def header_params(value: str) -> tuple[str, dict[str, str]]:
    """``form-data; name="a"; filename*=UTF-8''b%20c`` -> (``form-data``, {name: a, filename: b c}).

    Parameter names are lower-cased; an RFC 2231/5987 ``name*`` value wins over a plain ``name``.
    """
    main, _, rest = value.partition(";")
    params: dict[str, str] = {}
    extended: dict[str, str] = {}
    for m in _PARAM.finditer(";" + rest):
        name, raw = m[1].lower(), m[2].strip()
        if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        if name.endswith("*"):
            charset, _, encoded = raw.partition("'")
            _, _, encoded = encoded.partition("'")
            try:
                extended[name[:-1]] = unquote(encoded, encoding=charset or "utf-8", errors="strict")
            except (LookupError, UnicodeDecodeError):
                continue
        else:
            params[name] = raw
    params.update(extended)
    return main.strip().lower(), params


def boundary_of(content_type: str | None) -> bytes:
    """The boundary of a ``multipart/form-data`` content type, or a 400 saying what is wrong."""
    kind, params = header_params(content_type or "")
    if kind != "multipart/form-data":
        raise InvalidRequest(
            "this endpoint takes multipart/form-data (a 'file' and a 'purpose' field)", code="invalid_content_type"
        )
    boundary = params.get("boundary", "")
    if not _BOUNDARY_CHARS.match(boundary) or boundary.endswith(" "):
        raise InvalidRequest("the multipart boundary is missing or invalid", code="invalid_multipart")
    return boundary.encode("ascii")


def _headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.decode("utf-8", "replace").split("\n"):
        line = line.rstrip("\r")
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise InvalidRequest("a multipart part has a malformed header", code="invalid_multipart")
        headers[name.strip().lower()] = value.strip()
    return headers


def _part(block: bytes, data: bytes) -> Part:
    headers = _headers(block)
    kind, params = header_params(headers.get("content-disposition", ""))
    if kind != "form-data" or "name" not in params:
        raise InvalidRequest(
            "a multipart part has no 'Content-Disposition: form-data; name=...'", code="invalid_multipart"
        )
    return Part(params["name"], data, params.get("filename"), headers.get("content-type"), headers)


def parse_multipart(body: bytes, content_type: str | None, *, max_parts: int = MAX_PARTS) -> list[Part]:
    """Every part of the body, in order. Malformed input is a 400 with ``code="invalid_multipart"``."""
    delimiter = b"--" + boundary_of(content_type)
    if body.startswith(delimiter):
        pos = 0
    else:
        # A preamble (ignored) ends with the line break that belongs to the first delimiter.
        found = body.find(b"\n" + delimiter)
        if found < 0:
            raise InvalidRequest("the multipart body has no part with the declared boundary", code="invalid_multipart")
        pos = found + 1
    parts: list[Part] = []
    while True:
        pos += len(delimiter)
        if body.startswith(b"--", pos):
            return parts  # the close delimiter; anything after it is an epilogue
        while body[pos : pos + 1] in (b" ", b"\t"):
            pos += 1  # transport padding
        if body.startswith(b"\r\n", pos):
            pos += 2
        elif body.startswith(b"\n", pos):
            pos += 1
        else:
            raise InvalidRequest("a multipart delimiter is not followed by a line break", code="invalid_multipart")
        blank = _NO_HEADERS.match(body, pos) or _BLANK_LINE.search(body, pos, pos + MAX_HEADER_BYTES)
        if blank is None:
            raise InvalidRequest("a multipart part's headers do not end (or are too long)", code="invalid_multipart")
        end_headers, start = blank.start(), blank.end()
        following = body.find(b"\n" + delimiter, start)
        if following < 0:
            raise InvalidRequest("the multipart body ends before its closing boundary", code="invalid_multipart")
        end = following - 1 if following > start and body[following - 1 : following] == b"\r" else following
        if len(parts) >= max_parts:
            raise InvalidRequest(f"too many multipart parts (at most {max_parts})", code="invalid_multipart")
        parts.append(_part(body[pos:end_headers], body[start:end]))
        pos = following + 1


def form_fields(parts: list[Part]) -> dict[str, Part]:
    """Parts by name; a name sent twice is a 400 (it is ambiguous which one was meant)."""
    fields: dict[str, Part] = {}
    for part in parts:
        if part.name in fields:
            raise InvalidRequest(f"the form field '{part.name}' is given more than once", param=part.name)
        fields[part.name] = part
    return fields
