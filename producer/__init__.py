"""Publish change events to Hookpost from Python: :class:`Publisher`."""

from hookpost.producer.publisher import Publisher, UnroutableError

__all__ = ["Publisher", "UnroutableError"]
