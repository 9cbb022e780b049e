"""The worker's message consumer: reconnects to the broker within a second or two, and tells
the recovery loop when it did, so jobs whose messages were lost are published again at once."""

import functools
from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer

from workers.reaper import broker_back

# kombu waits 2, 4, 6 ... 30 s between connection attempts: after a 20 s outage a worker
# could come back 10 s after its broker. A failed attempt against a local broker is cheap.
RECONNECT_INTERVALS = {"interval_start": 0.5, "interval_step": 0.5, "interval_max": 1.0}


class Consumer(CeleryConsumer):
    """Celery's consumer with short reconnect intervals and a signal on reconnecting."""

    _connected_once = False

    def ensure_connected(self, conn: Any) -> Any:
        conn.ensure_connection = functools.partial(conn.ensure_connection, **RECONNECT_INTERVALS)
        return super().ensure_connected(conn)

    def connect(self) -> Any:
        connection = super().connect()
        if self._connected_once:
            # Messages published while the broker was away were never sent, and a broker that
            # restarted without persistence lost the ones it held: the database knows them.
            broker_back.set()
        self._connected_once = True
        return connection
