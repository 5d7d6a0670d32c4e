"""The API key cache of the paid hot path: a key's text is trusted for at most the TTL
after it passed the checks; a wrong secret never rides on a cached key."""

from __future__ import annotations

import time

import pytest

from marketplace import errors
from marketplace.accounts import keys as api_keys
from marketplace.db.engine import make_engine, read_session_factory, session_factory


@pytest.fixture
def engine(sqlite_url):  # type: ignore[no-untyped-def]
    return make_engine(sqlite_url)


def new_key(engine):  # type: ignore[no-untyped-def]
    with session_factory(engine)() as s, s.begin():
        return api_keys.create_key(s, "0x" + "ab" * 20, "k")


def revoke(engine, row) -> None:  # type: ignore[no-untyped-def]
    with session_factory(engine)() as s, s.begin():
        api_keys.revoke_key(s, row.address, row.id)


def test_a_cached_key_is_trusted_for_the_ttl_only(engine):
    row, key = new_key(engine)
    cache = api_keys.KeyCache(read_session_factory(engine), ttl=0.3)
    assert cache.authenticate(key).id == row.id
    forged = key[:-1] + ("A" if key[-1] != "A" else "B")  # the same key id, another secret
    with pytest.raises(errors.Unauthenticated, match="not valid"):
        cache.authenticate(forged)
    revoke(engine, row)  # through another worker
    assert cache.authenticate(key).id == row.id  # this worker learns it within the TTL
    time.sleep(0.35)
    with pytest.raises(errors.Unauthenticated, match="revoked"):
        cache.authenticate(key)


def test_a_key_revoked_through_this_worker_stops_at_once(engine):
    row, key = new_key(engine)
    cache = api_keys.KeyCache(read_session_factory(engine), ttl=60)
    cache.authenticate(key)
    revoke(engine, row)
    cache.forget(row.id)
    with pytest.raises(errors.Unauthenticated, match="revoked"):
        cache.authenticate(key)


def test_the_key_cache_is_bounded(engine):
    # keys cost nothing to make (any fresh wallet signs in): the cache never grows past its bound
    cache = api_keys.KeyCache(read_session_factory(engine), ttl=60, max_entries=3)
    keys = [new_key(engine)[1] for _ in range(7)]
    for key in keys:
        assert cache.authenticate(key).address == "0x" + "ab" * 20
        assert len(cache._verified) <= 3
