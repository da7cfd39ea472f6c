"""Reading the broker: queue depth on Redis or RabbitMQ, through kombu (never Celery)."""

from __future__ import annotations

from kombu.connection import Connection


def queue_depths(broker_url: str, queues: list[str], timeout_s: float = 2.0) -> dict[str, int]:
    """Messages waiting in each queue (a missing queue counts 0); raises when the broker is unreachable."""
    depths: dict[str, int] = {}
    with Connection(broker_url, connect_timeout=timeout_s) as connection:  # type: ignore[no-untyped-call]
        connection.ensure_connection(max_retries=1, timeout=timeout_s)
        channel = connection.default_channel
        for queue in queues:
            try:
                _name, count, _consumers = channel.queue_declare(queue=queue, passive=True)
            except Exception:
                # RabbitMQ closes the channel for an unknown queue; Redis simply has no key.
                channel = connection.channel()
                count = 0
            depths[queue] = int(count)
    return depths
