"""Celery configuration as plain data, shared by the API's client and the workers."""

from __future__ import annotations

from typing import Any

from shared.settings import Settings


def celery_config(settings: Settings) -> dict[str, Any]:
    """Settings every Celery app of Autopack uses: JSON only, late acks, one message at a time."""
    return {
        "broker_url": settings.broker_url,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": settings.queue,
        # Redis redelivers an unacked message after this; it must outlast the longest run.
        "broker_transport_options": {"visibility_timeout": settings.visibility_timeout_s},
        "task_send_sent_event": True,
        "worker_send_task_events": True,
        "task_track_started": True,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "broker_connection_timeout": 5,
    }
