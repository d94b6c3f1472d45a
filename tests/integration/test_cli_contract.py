"""The command line exactly as the public interface (README) writes it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from common.cli.main import main
from tests.support.factories import new_id


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    assert main([*argv, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_accounts_show_json_has_the_contract_keys(capsys: pytest.CaptureFixture[str]) -> None:
    acct = new_id()
    assert main(["db", "upgrade"]) == 0  # idempotent on a migrated database
    assert main(["accounts", "create", acct, "--currency", "EUR"]) == 0
    assert main(["accounts", "credit", acct, "--amount", "12.5", "--reason", "welcome"]) == 0
    assert main(["accounts", "card", acct, "--payment-method", "pm_card_visa"]) == 0
    assert (
        main(
            ["accounts", "auto-recharge", acct, "--balance-amount", "10", "--recharge-amount", "25"]
        )
        == 0
    )
    capsys.readouterr()
    shown = run_json(capsys, "accounts", "show", acct)
    assert {
        "account_id",
        "currency",
        "balance",
        "status",
        "auto_recharge",
        "retry_tier",
        "armed_level",
        "charges",
    } <= set(shown)
    assert shown["account_id"] == acct and shown["currency"] == "EUR"
    assert shown["balance"] == "12.50" and shown["status"] == "active"
    assert shown["auto_recharge"] == {
        "enabled": True,
        "balance_amount": "10.00",
        "recharge_amount": "25.00",
        "mode": "repeat",
    }
    assert shown["retry_tier"] == 0 and shown["armed_level"] is None
    assert shown["charges"] == []
    assert main(["accounts", "auto-recharge", acct, "--off"]) == 0
    capsys.readouterr()
    assert run_json(capsys, "accounts", "show", acct)["auto_recharge"]["enabled"] is False


def test_charges_are_listed_oldest_first_with_the_contract_fields(
    capsys: pytest.CaptureFixture[str],
) -> None:
    acct = new_id()
    main(["accounts", "create", acct])
    main(["accounts", "card", acct, "--payment-method", "pm_card_visa"])
    assert main(["accounts", "recharge", acct, "--amount", "30"]) == 0  # queued, no worker here
    assert main(["accounts", "recharge", acct, "--amount", "30"]) == 1  # one manual at a time
    capsys.readouterr()
    shown = run_json(capsys, "accounts", "show", acct)
    assert shown["runs_in_flight"][0]["kind"] == "manual"
    assert shown["charges"] == []  # nothing charged until the charge worker runs


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["accounts", "show", "no-such-account"], "unknown account 'no-such-account'"),
        (
            ["accounts", "credit", "no-such-account", "--amount", "1", "--reason", "x"],
            "unknown account",
        ),
        (["accounts", "create", "x", "--currency", "usd"], "3-letter ISO 4217"),
        (["accounts", "auto-recharge", "no-such", "--off", "--balance-amount", "1"], "--off"),
    ],
)
def test_errors_are_one_line_on_stderr_with_a_non_zero_status(
    capsys: pytest.CaptureFixture[str], argv: list[str], reason: str
) -> None:
    assert main(argv) != 0
    captured = capsys.readouterr()
    assert reason in captured.err and captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1


def test_limits_are_refused_with_a_reason(capsys: pytest.CaptureFixture[str]) -> None:
    acct = new_id()
    main(["accounts", "create", acct])
    capsys.readouterr()
    assert (
        main(
            [
                "accounts",
                "auto-recharge",
                acct,
                "--balance-amount",
                "100",
                "--recharge-amount",
                "20",
            ]
        )
        == 1
    )
    assert "below the minimum of 25.00" in capsys.readouterr().err
    assert main(["accounts", "recharge", acct, "--amount", "20000"]) == 1
    assert "above the maximum of 10000.00; support can raise it" in capsys.readouterr().err
    assert main(["accounts", "max-recharge", acct, "--amount", "50000"]) == 0
    assert main(["accounts", "recharge", acct, "--amount", "20000"]) == 1
    assert "no card on file" in capsys.readouterr().err


def test_usage_rejected_lists_reasons(capsys: pytest.CaptureFixture[str]) -> None:
    rows = run_json(capsys, "usage", "rejected")
    assert isinstance(rows, list)
    assert main(["usage", "rejected"]) == 0
