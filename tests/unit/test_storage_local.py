"""The embedded store and CID helpers, on a real disk."""

from __future__ import annotations

import io

import pytest

from storage import cid
from storage.errors import ContentNotFound, InvalidCar, InvalidCid
from storage.local import LocalStore


class Boom(io.RawIOBase):
    """A stream that fails half way, like a dropped upload."""

    def __init__(self) -> None:
        self.sent = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
        if self.sent > 2 << 20:
            raise ConnectionResetError("client went away")
        b[: len(b)] = b"\x01" * len(b)
        self.sent += len(b)
        return len(b)


def test_add_is_atomic_and_leaves_nothing_on_failure(tmp_path):
    store = LocalStore(tmp_path)
    with pytest.raises(ConnectionResetError):
        store.add(io.BufferedReader(Boom()))
    assert list((tmp_path / "blobs").iterdir()) == []
    assert list((tmp_path / "tmp").iterdir()) == []


def test_add_same_content_twice_keeps_one_copy(tmp_path):
    store = LocalStore(tmp_path)
    a = store.add(io.BytesIO(b"same"))
    b = store.add(io.BytesIO(b"same"))
    assert a == b
    assert len(list((tmp_path / "blobs").iterdir())) == 1


def test_pin_unpin_gc(tmp_path):
    store = LocalStore(tmp_path)
    kept = store.add(io.BytesIO(b"kept"))
    dropped = store.add(io.BytesIO(b"dropped"), pin=False)
    unpinned = store.add(io.BytesIO(b"unpinned"))
    store.unpin(unpinned)
    assert store.pins() == {kept}
    assert store.gc() == sorted([dropped, unpinned])
    assert store.has(kept) and not store.has(dropped) and not store.has(unpinned)
    with pytest.raises(ContentNotFound):
        list(store.cat(dropped))
    with pytest.raises(ContentNotFound):
        store.pin(dropped)


def test_lookups_accept_any_base(tmp_path):
    store = LocalStore(tmp_path)
    content = store.add(io.BytesIO(b"x" * 300_000))
    upper = "B" + content[1:].upper()  # base32upper, the same CID
    assert cid.same(upper, content)
    assert b"".join(store.cat(upper)) == b"x" * 300_000


def test_not_a_cid(tmp_path):
    with pytest.raises(InvalidCid, match="is not a CID"):
        cid.normalize("hello")
    with pytest.raises(InvalidCid):
        LocalStore(tmp_path).has("../../etc/passwd")


@pytest.mark.parametrize(
    "raw",
    [b"", b"\x05abc", b"\x0a" + b"\xa1\x67version\x01" + b"\x00", b"\xff" * 12],
    ids=["empty", "short-header", "no-roots", "garbage"],
)
def test_malformed_car_is_refused(tmp_path, raw):
    with pytest.raises(InvalidCar):
        LocalStore(tmp_path).import_car(io.BytesIO(raw))


def test_car_missing_a_block_is_refused(tmp_path):
    src = LocalStore(tmp_path / "a")
    content = src.add(io.BytesIO(b"y" * 600_000))
    buf = io.BytesIO()
    src.export_car(content, buf)
    truncated = buf.getvalue()[: len(buf.getvalue()) - 300_000]
    with pytest.raises(InvalidCar):
        LocalStore(tmp_path / "b").import_car(io.BytesIO(truncated))
    assert list((tmp_path / "b" / "blobs").iterdir()) == []
