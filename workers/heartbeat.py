"""A thread that renews a run's lease and notices cancellation or takeover."""

from __future__ import annotations

import logging
import threading

from sqlalchemy.orm import Session, sessionmaker

from shared.db import transaction
from shared.errors import LeaseLost
from shared.logs import log_context
from workers import leases
from workers.leases import Lease

logger = logging.getLogger(__name__)


class Heartbeat:
    """Renews the lease every interval until stopped; sets flags the executor polls."""

    def __init__(
        self, sessions: sessionmaker[Session], lease: Lease, ttl_s: float, interval_s: float
    ) -> None:
        self.sessions = sessions
        self.lease = lease
        self.ttl_s = ttl_s
        self.interval_s = interval_s
        self.lost = threading.Event()
        self.cancel_requested = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name=f"heartbeat-{lease.run_id}", daemon=True
        )

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval_s + 5)

    def stop_reason(self) -> str | None:
        """Why the current phase must stop now, if it must."""
        if self.lost.is_set():
            return "lease lost"
        if self.cancel_requested.is_set():
            return "cancel requested"
        return None

    def _loop(self) -> None:
        missed = 0
        with log_context(run_id=self.lease.run_id, lease_token=self.lease.token):
            while not self._stop.wait(self.interval_s):
                try:
                    with transaction(self.sessions) as session:
                        if leases.renew(session, self.lease, self.ttl_s):
                            self.cancel_requested.set()
                except LeaseLost:
                    logger.warning("lease lost; stopping this run")
                    self.lost.set()
                    return
                except Exception as error:
                    # The database may be briefly unreachable; the lease TTL covers a few misses.
                    # One warning per outage, not one per interval.
                    missed += 1
                    if missed == 1:
                        logger.warning("lease renewal failed; will retry: %s", error)
                    continue
                if missed:
                    logger.info("lease renewed again after %d missed renewal(s)", missed)
                    missed = 0
