"""Publishing change events on behalf of people and systems (``hookpost publish``, ``POST /changes``).

The body is validated by the same rules as the queue path (:mod:`hookpost.common.wire`), and its ``data`` against
its type's enforced contract, if any (:mod:`hookpost.admin.event_types`); then it is published with confirms.
Publishing the same change id twice is harmless: fan-out makes one event per (change, webhook).
"""

from typing import TYPE_CHECKING

from pymongo.errors import PyMongoError

from hookpost.common.models import ChangeEvent
from hookpost.common.wire import decode_change

if TYPE_CHECKING:
    from hookpost.admin.core import Admin


class ChangeOps:
    """Validate and publish change events."""

    def __init__(self, admin: "Admin") -> None:
        self.admin = admin

    def decode(self, body: bytes, content_type: str | None) -> ChangeEvent:
        """Validate a change event body as the dispatcher would (raise :class:`InvalidChangeError`)."""
        return decode_change(body, content_type, max_bytes=self.admin.settings.max_change_bytes)

    async def publish(self, change: ChangeEvent) -> str:
        """Publish ``change`` and return its id once the broker confirmed it; raise
        :class:`~hookpost.admin.event_types.ContractViolationError` if its data breaks its type's enforced
        contract. Where the store cannot be reached (a producer's machine with the broker alone), the contract is
        left to fan-out, which sets a breaking change aside with its reason."""
        try:
            await self.admin.event_types.violation(change)
        except PyMongoError:
            pass
        return await self.admin.publisher.publish(change)
