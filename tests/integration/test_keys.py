"""The API key cache of the paid hot path: a key's text is trusted for at most the TTL
after it passed the checks; a wrong secret never rides on a cached key."""

from __future__ import annotations

import time

import pytest

from marketplace import auth, db, errors


def test_a_cached_key_is_trusted_for_the_ttl_only(sqlite_url):
    engine = db.make_engine(sqlite_url)
    sessions = db.session_factory(engine)
    with sessions() as s, s.begin():
        row, key = auth.create_key(s, "0x" + "ab" * 20, "k")
    cache = auth.KeyCache(db.read_session_factory(engine), ttl=0.3)
    assert cache.authenticate(key).id == row.id
    forged = key[:-1] + ("A" if key[-1] != "A" else "B")  # the same key id, another secret
    with pytest.raises(errors.Unauthenticated, match="not valid"):
        cache.authenticate(forged)
    with sessions() as s, s.begin():  # revoked through another worker
        auth.revoke_key(s, row.address, row.id)
    assert cache.authenticate(key).id == row.id  # this worker learns it within the TTL
    time.sleep(0.35)
    with pytest.raises(errors.Unauthenticated, match="revoked"):
        cache.authenticate(key)


def test_a_key_revoked_through_this_worker_stops_at_once(sqlite_url):
    engine = db.make_engine(sqlite_url)
    sessions = db.session_factory(engine)
    with sessions() as s, s.begin():
        row, key = auth.create_key(s, "0x" + "ab" * 20, "k")
    cache = auth.KeyCache(db.read_session_factory(engine), ttl=60)
    cache.authenticate(key)
    with sessions() as s, s.begin():
        auth.revoke_key(s, row.address, row.id)
    cache.forget(row.id)
    with pytest.raises(errors.Unauthenticated, match="revoked"):
        cache.authenticate(key)
