"""MongoDB access for Hookpost: webhooks, webhook events and attempts, their indexes, and the janitor's cleanup."""

from hookpost.store.client import Store

__all__ = ["Store"]
