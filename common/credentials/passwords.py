"""Password hashing (argon2id; scrypt hashes still verify), temporary password generation and
the password policy. Pure.

New hashes are argon2id in the PHC format argon2-cffi writes
(``$argon2id$v=19$m=...,t=...,p=...$<salt>$<key>``): OWASP's first recommended setting, 19 MiB,
t=2, p=1, about as slow here as the scrypt budget before it. Hashes made before are
``scrypt$<n>$<r>$<p>$<salt>$<key>`` (salt and key base64, unpadded): they still verify, and
`needs_rehash` says yes for every one of them, so the next successful login stores an argon2id
hash instead (common/credentials/logins.py). Parameters travel with each hash either way, so
raising them later invalidates nothing.

Online guessing is capped by the per-account lockout and the console's per-address limit;
temporary passwords carry ~116 bits and chosen ones pass the policy below.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import string
import unicodedata
from dataclasses import dataclass
from typing import Final

import argon2
from argon2.exceptions import InvalidHashError, VerificationError

SCHEME = "scrypt"
ARGON2_PREFIX: Final = "$argon2id$"
ARGON2_MEMORY_KIB: Final = 19 * 1024
ARGON2_TIME_COST: Final = 2
ARGON2_PARALLELISM: Final = 1
# A stored hash is data: refuse argon2 parameters that would make one verification a bomb.
ARGON2_MAX_MEMORY_KIB, ARGON2_MAX_TIME_COST, ARGON2_MAX_PARALLELISM = 1024 * 1024, 16, 16
_ARGON2: Final = argon2.PasswordHasher(
    time_cost=ARGON2_TIME_COST,
    memory_cost=ARGON2_MEMORY_KIB,
    parallelism=ARGON2_PARALLELISM,
    hash_len=32,
    salt_len=16,
    type=argon2.Type.ID,
)
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
KEY_BYTES = 32
# A stored hash is data: refuse parameters that would make one verification a memory bomb.
MAX_N, MAX_R, MAX_P = 2**20, 32, 16

MIN_LENGTH = 12
MAX_LENGTH = 256  # nobody types more; bounds the work an attacker can make us do per attempt
TEMPORARY_LENGTH = 20
# No 0/O, 1/l/I: support reads temporary passwords out to people. 57 symbols, 20 chars ≈ 116 bits.
TEMPORARY_ALPHABET = "".join(c for c in string.ascii_letters + string.digits if c not in "0O1lI")
# Identifiers shorter than this would forbid ordinary passwords for merely containing them.
MIN_IDENTIFIER_IN_PASSWORD = 4

# The most common choices that would otherwise pass the length and class rules, plus the
# obvious product words. Compared lower-cased, whole and with trailing digits/symbols stripped.
COMMON_PASSWORDS = frozenset(
    {
        "password", "passw0rd", "password1", "password123", "password1234", "qwerty",
        "qwertyuiop", "qwerty123", "qwerty123456", "123456789012", "1234567890ab",
        "abc123", "abcd1234", "abcdefgh1234", "letmein", "welcome", "welcome1",
        "iloveyou", "admin", "administrator", "changeme", "changeit", "secret",
        "trustno1", "monkey", "dragon", "football", "baseball", "sunshine", "princess",
        "superman", "starwars", "whatever", "master", "shadow", "michael", "login",
        "passphrase", "p@ssw0rd", "p@ssword", "1q2w3e4r5t6y", "1qaz2wsx3edc", "zaq12wsx",
        "asdfghjkl", "asdfghjkl123", "contacto", "billing", "contactobilling", "temporary",
    }
)  # fmt: skip
_TRAILING_NOISE = re.compile(r"[\d\W_]+$")
_CLASS_SETS = (string.ascii_lowercase, string.ascii_uppercase, string.digits)


@dataclass(frozen=True)
class ParsedHash:
    n: int
    r: int
    p: int
    salt: bytes
    key: bytes


def _normalize(password: str) -> bytes:
    # The same password typed on another keyboard or OS can arrive in another Unicode form.
    return unicodedata.normalize("NFKC", password).encode("utf-8")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _derive(password: str, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    # OpenSSL's default 32 MiB ceiling is too tight once n or r are raised; allow what is needed.
    maxmem = 128 * r * (n + p + 2) + 1024 * 1024
    return hashlib.scrypt(
        _normalize(password), salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=dklen
    )


def hash_password(password: str) -> str:
    """An argon2id hash of the (NFKC-normalised) password: what every new password gets."""
    return _ARGON2.hash(_normalize(password))


def hash_scrypt(password: str, *, salt: bytes | None = None) -> str:
    """The scrypt hash logins stored before argon2id: kept so tests can make legacy rows."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    key = _derive(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, KEY_BYTES)
    return f"{SCHEME}${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"


def parse_hash(encoded: str) -> ParsedHash:
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != SCHEME:
        raise ValueError("not an scrypt password hash")
    try:
        n, r, p = (int(x) for x in parts[1:4])
        salt, key = _unb64(parts[4]), _unb64(parts[5])
    except ValueError:
        raise ValueError("malformed scrypt password hash") from None
    if n < 2 or n & (n - 1) or not 1 <= r <= MAX_R or not 1 <= p <= MAX_P or n > MAX_N:
        raise ValueError("scrypt parameters out of range")
    if len(salt) < 8 or len(key) < 16:
        raise ValueError("scrypt salt or key too short")
    return ParsedHash(n=n, r=r, p=p, salt=salt, key=key)


def _check_argon2(encoded: str) -> argon2.Parameters:
    try:
        params = argon2.extract_parameters(encoded)
    except InvalidHashError:
        raise ValueError("malformed argon2 password hash") from None
    if (
        params.type is not argon2.Type.ID
        or params.memory_cost > ARGON2_MAX_MEMORY_KIB
        or params.time_cost > ARGON2_MAX_TIME_COST
        or params.parallelism > ARGON2_MAX_PARALLELISM
    ):
        raise ValueError("argon2 parameters out of range")
    return params


def verify_password(password: str, encoded: str) -> bool:
    if encoded.startswith(ARGON2_PREFIX):
        _check_argon2(encoded)
        try:
            # argon2-cffi compares in constant time (libargon2's own comparison).
            return _ARGON2.verify(encoded, _normalize(password))
        except VerificationError:
            return False
        except InvalidHashError:
            raise ValueError("malformed argon2 password hash") from None
    parsed = parse_hash(encoded)
    candidate = _derive(password, parsed.salt, parsed.n, parsed.r, parsed.p, len(parsed.key))
    # Constant time on the derived keys: timing reveals nothing about how many bytes matched.
    return hmac.compare_digest(candidate, parsed.key)


def needs_rehash(encoded: str) -> bool:
    """Whether a login should store a fresh hash: any scrypt one, or argon2id made with other
    parameters than today's."""
    if encoded.startswith(ARGON2_PREFIX):
        _check_argon2(encoded)
        return _ARGON2.check_needs_rehash(encoded)
    parse_hash(encoded)  # a malformed hash is an error, not a reason to overwrite it
    return True


def scrypt_needs_rehash(encoded: str) -> bool:
    """Whether an scrypt hash was made with other parameters than the last scrypt ones."""
    parsed = parse_hash(encoded)
    return (parsed.n, parsed.r, parsed.p, len(parsed.key)) != (
        SCRYPT_N,
        SCRYPT_R,
        SCRYPT_P,
        KEY_BYTES,
    )


def generate_temporary_password() -> str:
    while True:
        candidate = "".join(secrets.choice(TEMPORARY_ALPHABET) for _ in range(TEMPORARY_LENGTH))
        # Rejection sampling keeps the choice uniform among passwords our own policy accepts.
        if all(any(c in cls for c in candidate) for cls in _CLASS_SETS):
            return candidate


def character_class(c: str) -> str:
    if c.isdigit():
        return "digit"
    if c.isalpha():
        return "upper" if c.isupper() else "lower" if c.islower() else "letter"
    return "symbol"


def policy_violation(password: str, *, account_id: str, username: str) -> str | None:
    """Why `password` is refused as a new billing password, or None when it is acceptable."""
    if len(password) < MIN_LENGTH:
        return f"must be at least {MIN_LENGTH} characters"
    if len(password) > MAX_LENGTH:
        return f"must be at most {MAX_LENGTH} characters"
    if any(unicodedata.category(c).startswith("C") for c in password):
        return "must not contain control characters"
    if len({character_class(c) for c in password}) < 2:
        return "must mix at least two kinds of characters (lower, upper, digits, symbols)"
    folded = password.casefold()
    for label, ident in (("account id", account_id), ("username", username)):
        if len(ident) >= MIN_IDENTIFIER_IN_PASSWORD and ident.casefold() in folded:
            return f"must not contain the {label}"
    stem = _TRAILING_NOISE.sub("", folded)
    if folded in COMMON_PASSWORDS or stem in COMMON_PASSWORDS:
        return "is too common"
    if len(set(folded)) <= 3:
        return "repeats too few distinct characters"
    return None


def same_password(a: str, b: str) -> bool:
    """Whether two typed passwords would hash alike (compared in constant time)."""
    return hmac.compare_digest(_normalize(a), _normalize(b))
