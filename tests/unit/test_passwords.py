"""Hash format, verification and the password policy (no database)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import string
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.credentials import passwords
from common.credentials.passwords import (
    MIN_LENGTH,
    character_class,
    generate_temporary_password,
    hash_password,
    hash_scrypt,
    needs_rehash,
    parse_hash,
    policy_violation,
    same_password,
    verify_password,
)

ACCOUNT = "acct-7f3a9c"
USERNAME = "billing-acct-7f3a9c"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def test_new_hashes_are_argon2id_with_owasp_parameters() -> None:
    encoded = hash_password("Correct-Horse-42")
    assert encoded.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert "Correct-Horse-42" not in encoded
    assert verify_password("Correct-Horse-42", encoded)
    assert not verify_password("Correct-Horse-43", encoded)
    assert not needs_rehash(encoded)


def test_every_scrypt_hash_wants_an_argon2id_rehash() -> None:
    legacy = hash_scrypt("Correct-Horse-42")
    assert verify_password("Correct-Horse-42", legacy)
    assert needs_rehash(legacy)
    assert not passwords.scrypt_needs_rehash(legacy)


def test_argon2_hashes_with_other_parameters_want_a_rehash() -> None:
    import argon2

    older = argon2.PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash("Horse-42!x")
    assert verify_password("Horse-42!x", older)
    assert needs_rehash(older)


@pytest.mark.parametrize(
    "encoded",
    [
        "$argon2id$v=19$m=4194304,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2U",
        "$argon2i$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2U",
        "$argon2id$v=19$m=19456,t=2$c2FsdA",
    ],
)
def test_dangerous_or_malformed_argon2_hashes_are_refused(encoded: str) -> None:
    with pytest.raises(ValueError):
        verify_password("anything-at-all-1", encoded)


def test_scrypt_hash_is_self_describing_and_is_not_the_password() -> None:
    encoded = hash_scrypt("Correct-Horse-42")
    scheme, n, r, p, salt, key = encoded.split("$")
    assert (scheme, int(n), int(r), int(p)) == ("scrypt", 2**14, 8, 1)
    parsed = parse_hash(encoded)
    assert len(parsed.salt) == 16 and len(parsed.key) == 32
    assert "Correct-Horse-42" not in encoded
    # The key is exactly scrypt over the stored salt and parameters: nothing home-made.
    expected = hashlib.scrypt(b"Correct-Horse-42", salt=parsed.salt, n=2**14, r=8, p=1, dklen=32)
    assert key == _b64(expected) and salt == _b64(parsed.salt)


def test_same_password_hashes_differently_by_salt_and_both_verify() -> None:
    first, second = hash_scrypt("Correct-Horse-42"), hash_scrypt("Correct-Horse-42")
    assert first != second
    assert hash_password("Correct-Horse-42") != hash_password("Correct-Horse-42")
    assert parse_hash(first).salt != parse_hash(second).salt
    assert verify_password("Correct-Horse-42", first)
    assert verify_password("Correct-Horse-42", second)
    assert not verify_password("Correct-Horse-43", first)


def test_verification_compares_derived_keys_with_compare_digest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    encoded = hash_scrypt("Correct-Horse-42")
    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert not verify_password("wrong-password-1", encoded)
    assert len(calls) == 1
    candidate, stored = calls[0]
    assert isinstance(candidate, bytes) and stored == parse_hash(encoded).key


def test_parameters_are_read_from_the_hash_and_old_ones_want_a_rehash() -> None:
    salt = b"0123456789abcdef"
    key = hashlib.scrypt(b"Correct-Horse-42", salt=salt, n=2**10, r=8, p=1, dklen=32)
    weak = f"scrypt${2**10}$8$1${_b64(salt)}${_b64(key)}"
    assert verify_password("Correct-Horse-42", weak)
    assert needs_rehash(weak)
    assert not needs_rehash(hash_password("Correct-Horse-42"))


@pytest.mark.parametrize(
    "encoded",
    [
        "plain-text-password",
        "bcrypt$12$8$1$c2FsdHNhbHRzYWx0$a2V5",
        "scrypt$16384$8$1$not base64!$a2V5a2V5a2V5a2V5a2V5a2V5",
        "scrypt$16385$8$1$c2FsdHNhbHRzYWx0$a2V5a2V5a2V5a2V5a2V5a2V5",  # n not a power of 2
        f"scrypt${2**30}$8$1$c2FsdHNhbHRzYWx0$a2V5a2V5a2V5a2V5a2V5a2V5",  # a memory bomb
        "scrypt$16384$8$1$c2FsdA$a2V5a2V5a2V5a2V5a2V5a2V5",  # salt too short
    ],
)
def test_malformed_or_dangerous_hashes_are_refused(encoded: str) -> None:
    with pytest.raises(ValueError):
        verify_password("anything-at-all-1", encoded)


def test_unicode_forms_of_one_password_are_the_same_password() -> None:
    composed, decomposed = "Caf\u00e9-Paris-2030", "Cafe\u0301-Paris-2030"
    assert verify_password(decomposed, hash_password(composed))
    assert same_password(composed, decomposed)


def test_temporary_passwords_are_long_unambiguous_unique_and_pass_the_policy() -> None:
    seen = {generate_temporary_password() for _ in range(300)}
    assert len(seen) == 300
    for pw in seen:
        assert len(pw) == 20
        assert not set(pw) & set("0O1lI")
        assert set(pw) <= set(string.ascii_letters + string.digits)
        assert policy_violation(pw, account_id=ACCOUNT, username=USERNAME) is None


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("Short-1", "at least 12 characters"),
        ("alllowercaseletters", "two kinds"),
        ("123456789012345", "two kinds"),
        ("!@#$%^&*()_+-=", "two kinds"),
        ("my-acct-7f3a9c-pass", "account id"),
        ("MY-ACCT-7F3A9C-PASS", "account id"),
        ("Password1234", "too common"),
        ("Contacto2024!!", "too common"),
        ("qwerty123456", "too common"),
        ("aaaaaaaa1111", "too few distinct"),
        ("tab\there-is-bad-1", "control characters"),
        ("Aa1-" * 70, "at most 256"),
    ],
)
def test_policy_refuses_with_a_reason(password: str, reason: str) -> None:
    violation = policy_violation(password, account_id=ACCOUNT, username=USERNAME)
    assert violation is not None and reason in violation


def test_policy_checks_the_username_too() -> None:
    violation = policy_violation("xx-jdoe-billing-99", account_id="a1", username="jdoe-billing")
    assert violation == "must not contain the username"


def test_a_one_letter_account_id_does_not_forbid_that_letter() -> None:
    assert policy_violation("plain-sailing-2030", account_id="a", username="billing-a") is None


@pytest.mark.parametrize(
    "password", ["Correct-Horse-42", "tidal basin ferry 7", "Zw8kQm2vLp4x", "ünïcödé-wörds-9"]
)
def test_policy_accepts_reasonable_passwords(password: str) -> None:
    assert policy_violation(password, account_id=ACCOUNT, username=USERNAME) is None


@given(st.text(max_size=64), st.text(min_size=1, max_size=12))
def test_property_anything_accepted_meets_every_rule(password: str, account: str) -> None:
    if policy_violation(password, account_id=account, username="billing-" + account) is None:
        assert MIN_LENGTH <= len(password) <= 256
        assert len({character_class(c) for c in password}) >= 2
        assert len(account) < 4 or account.casefold() not in password.casefold()
        assert password.casefold() not in passwords.COMMON_PASSWORDS


@given(st.text(max_size=MIN_LENGTH - 1))
def test_property_short_passwords_are_always_refused(password: str) -> None:
    assert policy_violation(password, account_id=ACCOUNT, username=USERNAME) is not None


@given(st.sampled_from([string.ascii_lowercase, string.ascii_uppercase, string.digits]), st.data())
def test_property_one_class_passwords_are_always_refused(
    alphabet: str, data: st.DataObject
) -> None:
    password = data.draw(st.text(alphabet=alphabet, min_size=MIN_LENGTH, max_size=40))
    assert policy_violation(password, account_id=ACCOUNT, username=USERNAME) is not None


@settings(max_examples=8, deadline=None)  # each hash costs ~50 ms by design
@given(st.text(max_size=40))
def test_property_hash_round_trips_and_rejects_any_other_password(password: str) -> None:
    encoded = hash_password(password)
    assert verify_password(password, encoded)
    assert not verify_password(password + "x", encoded)
