"""dramatiq's Redis maintenance on a clock instead of on dice.

dramatiq hands a dead worker's unacknowledged messages back to their queue (and expires old dead
letters) only in its "maintenance", which runs inside a broker command with a probability of
`maintenance_chance` per million commands, and only for that command's queue. A charge worker
killed with four run messages prefetched left them in its ack set for minutes: the queue was
idle, so nothing rolled the dice (issue 12, fault 4). The relay calls `run_maintenance` every
CONTACTO_BROKER_MAINTENANCE_INTERVAL_S for every queue and its delay queue, so a dead worker's
messages are back within heartbeat timeout + that interval.

It runs dramatiq's own dispatch script (dramatiq/brokers/redis/dispatch.lua) with its
maintenance flag set and a command the script does not know, so the script does its
maintenance and nothing else: the key layout stays dramatiq's, whatever version is installed.
`tests/integration/test_broker_maintenance.py` checks it against a real Redis.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from dramatiq.brokers.redis import RedisBroker

from common.names import QUEUES, delay_queue

# Not one of dispatch.lua's commands (enqueue, fetch, ack, …): the script runs its maintenance
# block, finds no command to run, and returns nothing.
MAINTENANCE_COMMAND = "maintenance"


def maintained_queues(queues: Iterable[str] = QUEUES) -> list[str]:
    """Each queue and its delay queue: a dead worker holds ack sets for both."""
    return [name for queue in queues for name in (queue, delay_queue(queue))]


def run_maintenance(broker: RedisBroker, queues: Iterable[str] = QUEUES) -> int:
    """Run dramatiq's maintenance once on each queue; returns how many queues were maintained.

    Blocking (Redis calls): the relay runs it in a thread.
    """
    dispatch = broker.scripts["dispatch"]
    names = maintained_queues(queues)
    # dramatiq's own probe of the Lua stack, cached per process.
    max_unpack = broker._max_unpack_size()  # type: ignore[no-untyped-call]
    for queue_name in names:
        dispatch(
            keys=[broker.namespace],
            args=[
                MAINTENANCE_COMMAND,
                int(time.time() * 1000),
                queue_name,
                broker.broker_id,
                broker.heartbeat_timeout,
                broker.dead_message_ttl,
                1,  # do_maintenance
                max_unpack,
            ],
        )
    return len(names)
