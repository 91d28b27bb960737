"""Baseline 1: the webhook job as a Dramatiq actor on RabbitMQ.

Run by the ``dramatiq`` worker CLI (``dramatiq bench.alt.dramatiq_worker [--processes P --threads T]``) with
``ALT_RABBITMQ_URL``, ``ALT_QUEUE`` (the actor's queue; Dramatiq adds ``ALT_QUEUE.DQ`` for delayed retries and
``ALT_QUEUE.XQ`` for dead messages), ``ALT_MONGODB_URL`` and ``ALT_MONGODB_DB`` in the environment. A failed
attempt raises, and Dramatiq's ``Retries`` middleware retries the message with exponential backoff (10 s doubling,
with jitter) up to 9 times: 10 attempts in all, as Hookpost makes.
"""

import os
from typing import Any

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.middleware import CurrentMessage

from bench.alt import job


def make(url: str, queue: str) -> tuple[RabbitmqBroker, dramatiq.Actor[[str, dict[str, Any]], None]]:
    """A RabbitMQ broker and the ``deliver`` actor on ``queue`` (the worker's, or a producer's)."""
    broker = RabbitmqBroker(url=url)
    broker.add_middleware(CurrentMessage())

    @dramatiq.actor(broker=broker, queue_name=queue, actor_name="deliver", max_retries=job.MAX_ATTEMPTS - 1,
                    min_backoff=int(job.MIN_BACKOFF_S * 1000), max_backoff=int(job.MAX_BACKOFF_S * 1000))
    def deliver(webhook_id: str, change: dict[str, Any]) -> None:
        message = CurrentMessage.get_current_message()
        retries = message.options.get("retries", 0) if message is not None else 0
        job.deliver(webhook_id, change, retries + 1)

    return broker, deliver


if "ALT_QUEUE" in os.environ:  # the worker CLI imports this module: give it the broker and the actor
    broker, deliver = make(os.environ["ALT_RABBITMQ_URL"], os.environ["ALT_QUEUE"])
    dramatiq.set_broker(broker)
