"""Bearer tokens' pure parts: their shape, the digest, names and scopes, and the log scrubber
that recognises them."""

from __future__ import annotations

import hashlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.credentials.tokens import (
    SCOPES,
    TOKEN_PATTERN,
    TokenError,
    check_name,
    check_scopes,
    digest,
    generate,
    parse_token,
    verify,
)
from common.logging import REDACTED, scrub


def test_a_token_is_a_selector_and_a_256_bit_secret() -> None:
    token, selector, secret_digest = generate()
    assert re.fullmatch(TOKEN_PATTERN, token)
    parsed = parse_token(token)
    assert parsed is not None
    assert parsed[0] == selector and len(selector) == 16
    assert len(parsed[1]) == 43  # 32 bytes, base64url, unpadded
    assert secret_digest == hashlib.sha256(parsed[1].encode()).digest()
    assert verify(parsed[1], secret_digest)


def test_tokens_never_repeat() -> None:
    tokens = {generate()[0] for _ in range(2000)}
    assert len(tokens) == 2000


@pytest.mark.parametrize(
    "text",
    [
        "",
        "cbt_",
        "Bearer cbt_0123456789abcdef_" + "A" * 43,
        "cbt_0123456789abcdef_" + "A" * 43 + "\n",
        "cbt_0123456789abcdeF_" + "A" * 43,
        "cbt_0123456789abcde_" + "A" * 44,
        "cbt_0123456789abcdef_" + "A" * 42 + "+",
        "CBT_0123456789abcdef_" + "A" * 43,
        " cbt_0123456789abcdef_" + "A" * 43,
    ],
)
def test_malformed_tokens_are_told_apart_before_any_lookup(text: str) -> None:
    assert parse_token(text) is None


def test_a_wrong_secret_or_none_stored_does_not_verify() -> None:
    _token, _selector, stored = generate()
    assert not verify("A" * 43, stored)
    assert not verify("A" * 43, None)
    assert digest("A" * 43) != stored


@pytest.mark.parametrize("name", ["upstream", "ops.tool-2", "A", "x" * 64, "9lives_"])
def test_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "-x", ".x", "x" * 65, "a b", "é", "a/b", "a\x00"])
def test_bad_names(name: str) -> None:
    with pytest.raises(TokenError, match="invalid token name"):
        check_name(name)


def test_scopes_are_known_deduplicated_and_ordered() -> None:
    assert check_scopes(["usage:write", "accounts:read", "usage:write"]) == SCOPES
    assert check_scopes(["usage:write"]) == ("usage:write",)
    with pytest.raises(TokenError, match="unknown scope"):
        check_scopes(["admin"])
    with pytest.raises(TokenError, match="at least one scope"):
        check_scopes([])


@given(st.text(max_size=30), st.text(max_size=30))
def test_the_scrubber_removes_any_token_wherever_it_is_in_a_string(before: str, after: str) -> None:
    token = generate()[0]
    text = scrub(f"{before}{token}{after}")
    assert token not in text and token[:24] not in text
    assert REDACTED in text


@pytest.mark.parametrize(
    "text",
    [
        "Authorization: Bearer s3cr3t-garbage",
        "bearer abc.def.ghi",
        "BEARER\tx",
        '{"h": "Bearer zzz"}',
    ],
)
def test_the_scrubber_removes_whatever_follows_bearer(text: str) -> None:
    scrubbed = scrub(text)
    assert REDACTED in scrubbed
    for secret in ("s3cr3t-garbage", "abc.def.ghi", "zzz"):
        assert secret not in scrubbed
