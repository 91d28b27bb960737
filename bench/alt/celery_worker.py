"""Baseline 2: the webhook job as a Celery task on RabbitMQ.

Run by the Celery worker CLI (``celery -A bench.alt.celery_worker worker``, default prefork pool) with
``ALT_RABBITMQ_URL``, ``ALT_QUEUE``, ``ALT_MONGODB_URL`` and ``ALT_MONGODB_DB`` in the environment. Every name
it uses on the broker derives from ``ALT_QUEUE``: the task queue and its exchange, ``ALT_QUEUE-ctl.pidbox`` and
``reply.ALT_QUEUE-ctl.pidbox`` (remote control), ``ALT_QUEUE-ev`` (events), so it never meets another Celery
app on the same broker. A failed attempt raises, and ``autoretry_for`` retries the task with exponential backoff
(10 s doubling, at most 8 h, with jitter) up to 9 times: 10 attempts in all, as Hookpost makes. No result backend.
"""

import os
from typing import Any

from celery import Celery, Task

from bench.alt import job


def make(url: str, queue: str) -> tuple[Celery, Task]:
    """A Celery app whose tasks go to ``queue``, and its ``deliver`` task (the worker's, or a producer's)."""
    app = Celery("hookpost_alt", broker=url, set_as_current=False)
    app.conf.update(task_default_queue=queue, control_exchange=f"{queue}-ctl", event_exchange=f"{queue}-ev",
                    task_ignore_result=True, broker_connection_retry_on_startup=True)

    @app.task(bind=True, name="deliver", autoretry_for=(job.DeliveryFailed,), max_retries=job.MAX_ATTEMPTS - 1,
              retry_backoff=int(job.MIN_BACKOFF_S), retry_backoff_max=int(job.MAX_BACKOFF_S), retry_jitter=True)
    def deliver(self: Task, webhook_id: str, change: dict[str, Any]) -> None:
        job.deliver(webhook_id, change, self.request.retries + 1)

    return app, deliver


if "ALT_QUEUE" in os.environ:  # the worker CLI imports this module (``-A``) and finds ``app``
    app, deliver = make(os.environ["ALT_RABBITMQ_URL"], os.environ["ALT_QUEUE"])
