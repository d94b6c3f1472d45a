"""The log scrubber's fast path (`_may_hold_secret`) never changes what the full pattern would
have redacted: it only skips strings the pattern cannot match."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from common.logging import _SECRET_VALUES, REDACTED, redact_secrets, scrub

# Text built from the pieces secrets are made of, so that near-misses are common.
_PIECES = st.sampled_from(
    [
        "4242",
        "4",
        " ",
        "-",
        "_",
        "sk",
        "rk",
        "_test_",
        "_live_",
        "cbt_",
        "0123abcd",
        "Bearer",
        "bEaReR",
        "earer",
        "\t",
        "٤",
        "x",
        "é",
        ":",
        "T",
        "2026-11-30T00:05:00.123456Z",
    ]
)
_TEXT = st.one_of(st.text(), st.lists(_PIECES, max_size=24).map("".join))


@given(_TEXT)
@example("4242 4242 4242 4242")
@example("1-2-3-4-5-6-7-8-9-0-1-2-3")
@example("٤٢٤٢٤٢٤٢٤٢٤٢٤٢٤٢")  # Arabic-Indic digits: \d matches them
@example("card 4000002500003155 declined")
@example("Authorization: Bearer abc")
def test_the_fast_path_redacts_exactly_what_the_pattern_does(text: str) -> None:
    assert scrub(text) == _SECRET_VALUES.sub(REDACTED, text)


@pytest.mark.parametrize(
    "text",
    ["sk_test_abc", "rk_live_Z9", "4242424242424242", "Bearer xyz", "cbt_0123abcd_secret"],
)
def test_secrets_are_redacted(text: str) -> None:
    assert scrub(f"before {text} after") == f"before {REDACTED} after"


def test_secret_keys_are_redacted_whatever_their_value_and_nested() -> None:
    event = {"password": 5, "path": "/v1/x", "nested": {"api_key": "k", "n": ["sk_test_1"]}}
    assert redact_secrets(None, "info", event) == {
        "password": REDACTED,
        "path": "/v1/x",
        "nested": {"api_key": REDACTED, "n": [REDACTED]},
    }
