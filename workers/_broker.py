"""The worker processes' broker: built once per process, whichever worker modules it runs.

`dramatiq workers.balance workers.charge workers.retry` (one process for everything, as the
demo may run) and `dramatiq workers.charge` (one per queue, as the Procfile does) both get one
broker with every actor declared on it.
"""

from __future__ import annotations

from common.logging import configure_logging
from config.broker import setup_broker
from config.settings import get_settings
from workers._resources import ResourcesMiddleware

settings = get_settings()
configure_logging(settings.log_format)
broker = setup_broker(settings, extra_middleware=[ResourcesMiddleware(settings)])
