"""The webhook relay: a thread of each worker process (and `serve`) that sends due deliveries.

Apart from the reaper's thread, so that a slow receiver never delays recovery. Several relays
(one per worker) share the work: each leases the deliveries it sends (use_cases/webhooks.py).
"""

import logging
import threading
from collections.abc import Callable

from ports.context import Context
from use_cases.webhooks import RELAY_BATCH, relay_deliveries

log = logging.getLogger(__name__)

RELAY_INTERVAL_S = 1.0


def start_webhook_relay_thread(context_factory: Callable[[], Context]) -> threading.Event:
    """Send due deliveries every RELAY_INTERVAL_S (at once again after a full batch); set the
    event to stop."""
    stop = threading.Event()

    def loop() -> None:
        context = context_factory()
        max_attempts = context.settings.webhook_max_attempts
        while not stop.is_set():
            sent = 0
            try:
                sent = relay_deliveries(
                    context.new_uow,
                    context.webhook_sender,
                    limit=RELAY_BATCH,
                    max_attempts=max_attempts,
                )
            except Exception:  # keep the loop alive across transient outages
                log.exception("webhook relay pass failed")
            if sent < RELAY_BATCH:
                stop.wait(RELAY_INTERVAL_S)

    threading.Thread(target=loop, name="assay-webhook-relay", daemon=True).start()
    return stop
