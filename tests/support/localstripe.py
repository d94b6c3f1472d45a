"""Run localstripe (a Stripe-compatible fake) on a free loopback port for a test's lifetime.

localstripe pickles its whole store to the fixed path /tmp/localstripe.pickle after every write
and reloads it at start unless `--from-scratch` is given. Instances started here pass
`--from-scratch` and run with that dump switched off (LAUNCH): they never read the file, and
leave nothing in /tmp.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# localstripe accepts any bearer key that starts with `sk_` and is longer than 5 characters.
TEST_API_KEY = "sk_test_contacto_localstripe"

# `python -m localstripe`, minus the pickle written to /tmp after every request.
LAUNCH = (
    "import localstripe.resources, localstripe.server; "
    "localstripe.resources.Store.dump_to_disk = lambda self: None; "
    "localstripe.server.start()"
)


class LocalstripeUnavailable(RuntimeError):
    """localstripe is not installed or did not start: tests skip rather than fail."""


@dataclass(frozen=True, slots=True)
class Localstripe:
    port: int
    api_base: str
    api_key: str
    process: subprocess.Popen[bytes]
    log_path: Path


def available() -> bool:
    return importlib.util.find_spec("localstripe") is not None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(api_base: str) -> bool:
    # An authenticated list call proves the app is routing, not merely that the port is open.
    request = urllib.request.Request(
        f"{api_base}/v1/customers", headers={"Authorization": f"Bearer {TEST_API_KEY}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


@contextlib.contextmanager
def run_localstripe(*, startup_timeout_s: float = 20.0, attempts: int = 3) -> Iterator[Localstripe]:
    """Start localstripe, yield once it answers, stop it (SIGTERM, then SIGKILL) on exit.

    The port is chosen by binding port 0 and releasing it, so another process may take it in
    between: a start that dies early is retried on a new port.
    """
    if not available():
        raise LocalstripeUnavailable("localstripe is not installed (pip install localstripe)")
    with tempfile.TemporaryDirectory(prefix="localstripe-") as workdir:
        log_path = Path(workdir) / "localstripe.log"
        last_error = "never started"
        for _ in range(attempts):
            port = free_port()
            api_base = f"http://127.0.0.1:{port}"
            with log_path.open("ab") as log:
                process = subprocess.Popen(
                    [sys.executable, "-c", LAUNCH, "--port", str(port), "--from-scratch"],
                    cwd=workdir,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env={**os.environ, "PYTHONWARNINGS": "ignore"},
                )
            deadline = time.monotonic() + startup_timeout_s
            while time.monotonic() < deadline and process.poll() is None:
                if _answers(api_base):
                    break
                time.sleep(0.1)
            if process.poll() is None and _answers(api_base):
                try:
                    yield Localstripe(port, api_base, TEST_API_KEY, process, log_path)
                finally:
                    _stop(process)
                return
            _stop(process)
            last_error = log_path.read_text(errors="replace")[-2000:]
        raise LocalstripeUnavailable(f"localstripe did not start: {last_error}")


# --- playing the customer's part ---------------------------------------------------------------
# The 3-D Secure test card localstripe knows (it leaves an off-session intent requires_action).
THREE_DS_CARD = "4000002500003155"


def card_payment_method(api_base: str, number: str) -> str:
    """A card PaymentMethod, made as Stripe.js would make it from the typed number."""
    request = urllib.request.Request(
        f"{api_base}/v1/payment_methods",
        data=urllib.parse.urlencode(
            {
                "type": "card",
                "card[number]": number,
                "card[exp_month]": "12",
                "card[exp_year]": "2034",
                "card[cvc]": "123",
            }
        ).encode(),
        headers={"Authorization": f"Bearer {TEST_API_KEY}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        method_id: str = json.loads(response.read())["id"]
    return method_id


def authenticate(api_base: str, client_secret: str, *, success: bool) -> None:
    """The bank's answer to a 3-D Secure step, as localstripe's Stripe.js double sends it for
    confirmCardPayment: only the client secret proves the right to answer."""
    pi = client_secret.split("_secret_")[0]
    request = urllib.request.Request(
        f"{api_base}/v1/payment_intents/{pi}/_authenticate?success={str(success).lower()}",
        data=json.dumps({"key": "pk_test_contacto", "client_secret": client_secret}).encode(),
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
