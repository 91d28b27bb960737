"""Lanes: the per-entity order of a webhook with ``ordering=entity``, as plain values and functions.

The events of one entity (``entity.kind`` + ``entity.id``) for one such webhook form a *lane*. At most one of them
is in flight (the *head*); the others wait, in the order of their :class:`LaneKey`:

- ``rank``: 0 for a change fanned out as it came; the time (epoch ms) an operator restarted the event or replayed
  the change, which puts it at the tail of its lane;
- ``seq``: the change's ``sequence`` if the producer gave one, else its ``occurred_at`` in epoch ms (which itself
  defaults to the time Hookpost received the change);
- ``tie``: the change id.

A change whose key is at or below the key last sent in its lane arrives *late* (:func:`is_late`): it is ended
``Finished`` unsent, superseded by the event that was sent.
"""

from typing import NamedTuple

from hookpost.common.models import ChangeEvent, Entity, to_ms


class LaneKey(NamedTuple):
    """Where an event stands in its lane (lower goes first)."""

    rank: int
    seq: int
    tie: str


def lane_of(webhook_id: str, entity: Entity) -> str:
    """Return the lane id of ``entity``'s events for the webhook ``webhook_id`` (unambiguous for any kind and id).

    >>> lane_of("wh_1", Entity(kind="article", id="A-1"))
    'wh_1:7:article:A-1'
    """
    return f"{webhook_id}:{len(entity.kind)}:{entity.kind}:{entity.id}"


def webhook_of(lane: str) -> str:
    """Return the webhook id a lane id starts with.

    >>> webhook_of("wh_1:7:article:A-1")
    'wh_1'
    """
    return lane.split(":", 1)[0]


def change_key(change: ChangeEvent, rank: int = 0) -> LaneKey:
    """Return the lane key of ``change`` (``rank`` > 0 for a replayed change: the tail of its lane)."""
    seq = change.sequence if change.sequence is not None else to_ms(change.occurred_at)
    return LaneKey(rank, seq, change.id)


def is_late(key: LaneKey, last_sent: LaneKey | None) -> bool:
    """Tell whether an event keyed ``key`` arrives late in a lane whose last sent event was keyed ``last_sent``:
    at or below it. An event at the tail (``rank`` > 0: restarted or replayed) is never late.

    >>> is_late(LaneKey(0, 5, "c5"), LaneKey(0, 7, "c7")), is_late(LaneKey(0, 8, "c8"), LaneKey(0, 7, "c7"))
    (True, False)
    """
    if key.rank > 0 or last_sent is None:
        return False
    return (key.seq, key.tie) <= (last_sent.seq, last_sent.tie)
