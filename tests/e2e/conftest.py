"""Fixtures of the end-to-end tests that need settings of their own and a store on them."""

from collections.abc import AsyncIterator

import pytest

from hookpost.store import Store


@pytest.fixture
async def stores(settings_factory) -> AsyncIterator:  # type: ignore[no-untyped-def]
    """``make(**settings)`` → (settings, connected store with indexes); closed afterwards."""
    opened: list[Store] = []

    async def make(**overrides: object):  # type: ignore[no-untyped-def]
        s = settings_factory(**overrides)
        st = Store.connect(s.mongodb_url, s.mongodb_db)
        await st.ensure_indexes()
        opened.append(st)
        return s, st
    yield make
    for st in opened:
        await st.close()
