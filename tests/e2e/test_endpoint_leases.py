"""The release lease on endpoint documents, against the real store: one process at a time re-publishes an
endpoint's held deliveries, and taking (or being refused) the lease of one endpoint touches no other."""

from hookpost.store import Store

A, B = "http://a.example:80", "http://b.example:80"


async def releasing(store: Store, key: str) -> None:
    await store.endpoints.count_failures(key, 1, 1)
    await store.endpoints.mark_releasing(key)


async def test_a_lease_another_process_holds_is_refused_and_no_other_endpoint_is_touched(store: Store) -> None:
    """Two endpoints recover at once: proc-2 releases B while proc-1 releases A; proc-2 asking for A's lease
    must be refused (not handed B's, which it holds already)."""
    await releasing(store, A)
    await releasing(store, B)
    assert await store.endpoints.lease_release(A, "proc-1", 60.0)
    assert await store.endpoints.lease_release(B, "proc-2", 60.0)
    before = await store.endpoints.coll.find_one({"_id": B})

    assert not await store.endpoints.lease_release(A, "proc-2", 60.0)

    assert (await store.endpoints.coll.find_one({"_id": A}))["release_owner"] == "proc-1"
    assert await store.endpoints.coll.find_one({"_id": B}) == before


async def test_the_holder_keeps_its_lease_and_an_expired_lease_passes_on(store: Store) -> None:
    await releasing(store, A)
    assert await store.endpoints.lease_release(A, "proc-1", 0.0)  # expires at once
    assert await store.endpoints.lease_release(A, "proc-1", 60.0)  # the holder renews
    assert not await store.endpoints.lease_release(A, "proc-2", 60.0)
    await store.endpoints.coll.update_one({"_id": A}, {"$set": {"release_lease_ms": 1}})  # it lapsed
    assert await store.endpoints.lease_release(A, "proc-2", 60.0)
    assert (await store.endpoints.coll.find_one({"_id": A}))["release_owner"] == "proc-2"


async def test_no_lease_on_an_endpoint_with_nothing_to_release(store: Store) -> None:
    await store.endpoints.count_failures(A, 1, 1)
    assert not await store.endpoints.lease_release(A, "proc-1", 60.0)
