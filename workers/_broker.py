"""The worker processes' broker: built once per process, whichever worker modules it runs.

`dramatiq workers.balance workers.charge workers.retry` (one process for everything, as the
demo may run) and `dramatiq workers.charge` (one per queue, as the Procfile does) both get one
broker with every actor declared on it.
"""

from __future__ import annotations

import os

from dramatiq.middleware import Middleware

from common.broker.factory import setup_broker
from common.logging import configure_logging
from workers._resources import ResourcesMiddleware
from workers._startup import load_settings

settings = load_settings()
configure_logging(settings.log_format)
middleware: list[Middleware] = [ResourcesMiddleware(settings)]
# dramatiq's Prometheus middleware forks an exposition server on dramatiq_prom_port; only the
# processes given a port of their own get one (the Procfile does), so tests and one-off workers
# never fight over the default port.
if os.environ.get("dramatiq_prom_port"):  # noqa: SIM112 - dramatiq names it so
    from dramatiq.middleware.prometheus import Prometheus

    middleware.append(Prometheus())
broker = setup_broker(settings, extra_middleware=middleware)
