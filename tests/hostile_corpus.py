"""The hostile-input corpus shared by the hostile-input tests, and the problem assertion they use.

Every case is raw bytes (never `json=`), so the body is exactly what an attacker would send:
NaN, infinities, NUL characters, lone surrogates, absurd nesting and sizes, broken encodings,
wrong content types and unknown fields. The answer must be a 4xx problem+json document that
echoes nothing hostile back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx

from tests.factories import PASSWORD

JSON = "application/json"
PROBLEM = "application/problem+json"
PLACEHOLDER = "@@HOSTILE@@"
DEEP = 10_000

# Bytes that must never come back: the NUL character and a lone surrogate, raw or escaped.
ALWAYS_FORBIDDEN: tuple[bytes, ...] = (
    b"\x00",
    b"\\u0000",
    b"\\ud800",
    b"\\uD800",
    b"\xed\xa0\x80",  # a surrogate smuggled through as (invalid) UTF-8
)

PARSE_FAILURE = frozenset({400, 422})


@dataclass(frozen=True)
class Hostile:
    """A hostile JSON literal put in place of one field of an otherwise valid body."""

    id: str
    key: str
    literal: str
    statuses: frozenset[int] = frozenset({422})
    forbidden: tuple[bytes, ...] = ()


def nested_array(depth: int) -> str:
    return "[" * depth + "]" * depth


def nested_object(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def number_cases(target: str) -> list[Hostile]:
    huge_integer = "9" * 5000
    return [
        Hostile("nan", target, "NaN", forbidden=(b"NaN",)),
        Hostile("infinity", target, "Infinity", forbidden=(b"Infinity",)),
        Hostile("minus_infinity", target, "-Infinity", forbidden=(b"Infinity",)),
        Hostile("1e400", target, "1e400", forbidden=(b"1e400", b"inf")),
        Hostile("minus_1e400", target, "-1e400", forbidden=(b"1e400", b"inf")),
        Hostile("big_integer_100_digits", target, "1" + "0" * 100, forbidden=(b"0" * 100,)),
        Hostile(
            "huge_integer_5000_digits",
            target,
            huge_integer,
            statuses=PARSE_FAILURE,
            forbidden=(b"9" * 50,),
        ),
        Hostile("deep_array", target, nested_array(DEEP), statuses=PARSE_FAILURE),
        Hostile("deep_object", target, nested_object(DEEP), statuses=PARSE_FAILURE),
    ]


STRING_MARKER = "Zq7HOSTILE"


def string_cases(target: str, *, as_list: bool = False) -> list[Hostile]:
    """NUL and lone surrogates (as JSON escapes), raw control bytes and oversized values."""

    def lit(text_literal: str) -> str:
        return f"[{text_literal}]" if as_list else text_literal

    marker = STRING_MARKER
    return [
        Hostile("nul", target, lit(f'"{marker}\\u0000x"'), forbidden=(marker.encode(),)),
        Hostile("surrogate", target, lit(f'"{marker}\\ud800x"'), forbidden=(marker.encode(),)),
        Hostile("low_surrogate_alone", target, lit(f'"{marker}\\udfffx"'), forbidden=(b"\\udfff",)),
        # An unescaped control byte inside a string is not JSON at all.
        Hostile("raw_nul_byte", target, lit(f'"{marker}\x00x"'), forbidden=(marker.encode(),)),
        Hostile("deep_array", target, nested_array(DEEP), statuses=PARSE_FAILURE),
        Hostile("number_nan", target, "NaN", forbidden=(b"NaN",)),
    ]


HUGE_STRING = "H" * 20_000  # well under the body limit, far over any field's maximum


def value_cases(target: str) -> list[Hostile]:
    """Every hostile value once, whatever the type of the field it replaces."""
    cases = number_cases(target)
    taken = {case.id for case in cases} | {"number_nan"}
    cases += [case for case in string_cases(target) if case.id not in taken]
    cases.append(Hostile("string_20000", target, json.dumps(HUGE_STRING), forbidden=(b"H" * 200,)))
    return cases


@dataclass(frozen=True)
class RawBody:
    """A whole request body (bytes) and the content type it is sent with."""

    id: str
    content: bytes | None  # None: a valid body of the route, so only the content type is hostile
    content_type: str = JSON
    statuses: frozenset[int] = frozenset({422})
    code: str | None = None
    forbidden: tuple[bytes, ...] = ()


RAW_BODIES = [
    RawBody("empty", b""),
    RawBody("null", b"null"),
    RawBody("array", b"[]"),
    RawBody("array_of_object", b'[{"name": "x"}]'),
    RawBody("string", b'"just a string"', forbidden=(b"just a string",)),
    RawBody("number", b"42"),
    RawBody("nan_body", b"NaN", forbidden=(b"NaN",)),
    RawBody("invalid_json", b'{"name": ', code="validation_failed"),
    RawBody("trailing_garbage", b'{"name": "x"} trailing', forbidden=(b"trailing",)),
    RawBody("single_quotes", b"{'name': 'x'}"),
    RawBody("deep_arrays", nested_array(DEEP).encode(), statuses=PARSE_FAILURE),
    RawBody("deep_objects", nested_object(DEEP).encode(), statuses=PARSE_FAILURE),
    RawBody("invalid_utf8", b'{"name": "\xff\xfe\xfd"}', statuses=PARSE_FAILURE),
    RawBody("utf8_encoded_surrogate", b'{"name": "\xed\xa0\x80"}', statuses=PARSE_FAILURE),
    RawBody(
        "text_plain",
        None,
        content_type="text/plain",
        statuses=frozenset({415}),
        code="unsupported_media_type",
    ),
    RawBody(
        "form_urlencoded",
        b"name=Acme&email=a%40example.com&password=correct+horse+battery&zip_code=02139",
        content_type="application/x-www-form-urlencoded",
        statuses=frozenset({415}),
        code="unsupported_media_type",
    ),
    RawBody(
        "xml",
        b"<seller><name>x</name></seller>",
        content_type="application/xml",
        statuses=frozenset({415}),
        code="unsupported_media_type",
    ),
]


@dataclass(frozen=True)
class Extra:
    """Fields that are not part of the request model, added to a valid body."""

    id: str
    fields: dict[str, Any]
    forbidden: tuple[bytes, ...] = ()
    # A key that is not valid Unicode is refused before pydantic can call it "extra".
    named_as_extra: bool = True


EXTRA_FIELDS = [
    Extra("unknown_field", {"is_admin": True}),
    Extra("server_owned_id", {"id": "00000000-0000-0000-0000-000000000001"}),
    Extra("server_owned_created_at", {"created_at": "2020-01-01T00:00:00Z"}),
    Extra("server_owned_password_hash", {"password_hash": "$2b$12$abcdefghijklmnopqrstuv"}),
    Extra("email_on_patch_or_typo", {"emial": "x@example.com"}),
    Extra("key_with_nul", {"k\u0000ey": 1}),
    Extra("key_with_surrogate", {"k\ud800ey": 1}, named_as_extra=False),
    Extra("key_20000_chars", {"K" * 20_000: 1}, forbidden=(b"K" * 200,)),
]


# --- login forms (application/x-www-form-urlencoded) ------------------------------------------


@dataclass(frozen=True)
class HostileForm:
    id: str
    content: bytes
    content_type: str = "application/x-www-form-urlencoded"
    statuses: frozenset[int] = frozenset({422})
    forbidden: tuple[bytes, ...] = ()


def form_body(username: str, password: str, extra: str = "") -> bytes:
    return f"username={username}&password={password}{extra}".encode()


EMAIL_SLOT = "@@EMAIL@@"
PW = PASSWORD.replace(" ", "+")

HOSTILE_FORMS = [
    HostileForm("nul_in_username", form_body(f"{EMAIL_SLOT}%00", PW)),
    HostileForm("nul_in_password", form_body(EMAIL_SLOT, "correct%00horse+battery")),
    HostileForm("password_73_bytes", form_body(EMAIL_SLOT, "p" * 73)),
    HostileForm("password_74_bytes_37_chars", form_body(EMAIL_SLOT, "%C3%A9" * 37)),
    HostileForm("password_10000", form_body(EMAIL_SLOT, "p" * 10_000), forbidden=(b"p" * 100,)),
    HostileForm("username_10000", form_body("u" * 10_000, PW), forbidden=(b"u" * 100,)),
    HostileForm("missing_password", f"username={EMAIL_SLOT}".encode()),
    HostileForm("empty", b""),
    HostileForm("unknown_field", form_body(EMAIL_SLOT, PW, "&is_admin=1")),
    HostileForm("wrong_grant_type", form_body(EMAIL_SLOT, PW, "&grant_type=client_credentials")),
    HostileForm(
        "percent_encoded_invalid_utf8",
        form_body(f"%FF%FE{EMAIL_SLOT}", "%ED%A0%80" + "a" * 10),
        statuses=frozenset({400, 401, 422}),
    ),
    HostileForm(
        "raw_invalid_utf8",
        form_body(EMAIL_SLOT, "") + b"\xff\xfe\xed\xa0\x80aaaaaaaa",
        statuses=frozenset({400, 401, 422}),
    ),
    HostileForm(
        "json_instead_of_form",
        json.dumps({"username": EMAIL_SLOT, "password": PASSWORD}).encode(),
        content_type=JSON,
        statuses=frozenset({415, 422}),
    ),
    HostileForm(
        "text_plain",
        form_body(EMAIL_SLOT, PW),
        content_type="text/plain",
        statuses=frozenset({415, 422}),
    ),
]


# --- the answer ------------------------------------------------------------------------------


def strict_json(content: bytes) -> Any:
    def refuse(constant: str) -> Any:
        raise AssertionError(f"problem body contains the non-JSON constant {constant}")

    return json.loads(content.decode("utf-8"), parse_constant=refuse)


def assert_problem(
    response: httpx.Response,
    statuses: frozenset[int],
    *,
    code: str | None = None,
    forbidden: tuple[bytes, ...] = (),
) -> dict[str, Any]:
    """A 4xx problem+json document with a code and request id that echoes nothing hostile."""
    assert response.status_code in statuses, (response.status_code, response.text[:500])
    assert 400 <= response.status_code < 500
    assert response.headers["content-type"].split(";")[0].strip() == PROBLEM
    body = strict_json(response.content)
    assert isinstance(body, dict)
    assert body["status"] == response.status_code
    assert isinstance(body["code"], str)
    assert body["code"]
    assert body["code"] == body["code"].lower()
    assert " " not in body["code"]
    if code is not None:
        assert body["code"] == code
    assert isinstance(body["type"], str)
    assert isinstance(body["title"], str)
    assert isinstance(body["detail"], str)
    assert body["detail"]
    assert body["request_id"]
    assert body["request_id"] == response.headers["x-request-id"]
    if body["code"] == "validation_failed":
        assert response.status_code == 422
        assert isinstance(body["errors"], list)
        assert body["errors"]
        for issue in body["errors"]:
            assert set(issue) == {"loc", "msg", "type"}, issue
            assert isinstance(issue["loc"], list)
            assert all(isinstance(part, str | int) for part in issue["loc"])
            assert isinstance(issue["msg"], str)
            assert isinstance(issue["type"], str)
    for fragment in (*ALWAYS_FORBIDDEN, *forbidden):
        assert fragment not in response.content, f"response echoes {fragment[:40]!r}"
    return body
