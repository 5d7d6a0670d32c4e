"""Storage against a real js-ipfs daemon: identical CIDs three ways, add/cat with
progress, CAR round trips, tampering, timeouts and a dead node."""

from __future__ import annotations

import hashlib
import io
import os
import time

import pytest
import requests

from storage import car, cid, unixfs
from storage.errors import ContentMismatch, StoreTimeout, StoreUnavailable
from storage.ipfs import IpfsStore
from storage.local import LocalStore
from tests.support.launchers import JsIpfs, start_jsipfs
from tests.support.paths import JSIPFS

K = 256 * 1024
MiB = 1 << 20
SIZES = [
    pytest.param(0, id="0B"),
    pytest.param(1, id="1B"),
    pytest.param(K, id="256KiB"),
    pytest.param(K + 1, id="256KiB+1"),
    pytest.param(174 * K, id="174-chunks"),
    pytest.param(175 * K, id="175-chunks"),
    pytest.param(45 * MiB, id="45MiB", marks=pytest.mark.slow),
    pytest.param(100 * MiB, id="100MiB", marks=pytest.mark.slow),
]


def pseudo_random(size: int, seed: int = 7) -> bytes:
    """Deterministic incompressible bytes (fast: sha256 in counter mode)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest() * 64  # 2 KiB blocks
        counter += 1
    return bytes(out[:size])


def node_add(node: JsIpfs, data: bytes) -> str:
    """A raw HTTP add, exactly as `ipfs add --cid-version=1` (no client library)."""
    resp = requests.post(
        f"{node.url}/add",
        params={"cid-version": 1, "raw-leaves": "true", "cid-base": "base32", "pin": "true"},
        files={"file": ("f", data, "application/octet-stream")},
        timeout=120,
    )
    resp.raise_for_status()
    return str(resp.json()["Hash"])


@pytest.mark.parametrize("size", SIZES)
def test_cids_identical_three_ways(jsipfs, size):
    data = pseudo_random(size, seed=size)
    ours = cid.compute(io.BytesIO(data))
    blocks = unixfs.file_blocks(io.BytesIO(data))
    *_, root = blocks
    independent = cid.normalize(car_text(root.cid))
    node = node_add(jsipfs, data)
    assert ours == independent == cid.normalize(node), (ours, independent, node)
    assert cid.same(node, ours)


def car_text(binary: bytes) -> str:
    import libipld

    return str(libipld.encode_cid(binary))


def test_add_and_cat_with_progress(jsipfs):
    store = IpfsStore(jsipfs.api, timeout=30)
    data = pseudo_random(3 * MiB + 5)
    added: list[int] = []
    content = store.add(io.BytesIO(data), on_bytes=added.append)
    assert content == cid.compute_bytes(data)
    assert sum(added) == len(data)
    read: list[int] = []
    assert b"".join(store.cat(content, on_bytes=read.append)) == data
    assert sum(read) == len(data)
    assert store.has(content)


def test_missing_cid_times_out_clearly(jsipfs):
    store = IpfsStore(jsipfs.api, timeout=2)
    missing = cid.compute_bytes(b"never added " + os.urandom(16))
    started = time.monotonic()
    with pytest.raises(StoreTimeout) as info:
        b"".join(store.cat(missing, timeout=1))
    assert time.monotonic() - started < 5
    assert info.value.message == (
        f"the IPFS node at {jsipfs.api} did not answer cat {missing} within 1 s"
    )
    assert not store.has(missing)


def test_stopped_daemon_is_a_clear_error(tmp_path):
    node = start_jsipfs(JSIPFS, tmp_path / "repo")
    store = IpfsStore(node.api, timeout=5)
    content = store.add(io.BytesIO(b"hello"))
    node.stop()
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="cannot reach the IPFS node"):
        b"".join(store.cat(content))
    with pytest.raises(StoreUnavailable):
        store.add(io.BytesIO(b"more"))
    assert time.monotonic() - started < 5


def test_car_moves_between_local_store_and_node(jsipfs, tmp_path):
    local = LocalStore(tmp_path / "local")
    node = IpfsStore(jsipfs.api, timeout=30)
    data = pseudo_random(2 * MiB + 3, seed=11)
    content = local.add(io.BytesIO(data))
    exported = io.BytesIO()
    local.export_car(content, exported)
    exported.seek(0)
    assert node.import_car(exported) == content
    assert b"".join(node.cat(content)) == data
    # and back: the node's own `dag export` imports into a fresh local store
    back = io.BytesIO()
    node.export_car(content, back)
    back.seek(0)
    other = LocalStore(tmp_path / "other")
    assert other.import_car(back) == content
    assert b"".join(other.cat(content)) == data


def test_tampered_car_is_served_by_the_node_and_refused_by_us(jsipfs, tmp_path):
    data = pseudo_random(K * 3 + 100, seed=5)
    blocks = list(unixfs.file_blocks(io.BytesIO(data)))
    root = blocks[-1]
    content = cid.normalize(car_text(root.cid))
    # flip one byte inside the second leaf's data, keeping its (now wrong) CID
    leaf = blocks[1]
    bad = unixfs.Block(leaf.cid, leaf.data[:10] + bytes([leaf.data[10] ^ 1]) + leaf.data[11:])
    buf = io.BytesIO()
    car.write(buf, root.cid, [b if b is not leaf else bad for b in blocks])
    raw = buf.getvalue()
    # our own CAR reader refuses it outright
    with pytest.raises(Exception, match="does not match its CID"):
        LocalStore(tmp_path / "l").import_car(io.BytesIO(raw))
    # js-ipfs takes it and serves the altered bytes with HTTP 200
    resp = requests.post(
        f"{jsipfs.url}/dag/import",
        files={"file": ("x.car", raw, "application/vnd.ipld.car")},
        timeout=30,
    )
    assert resp.status_code == 200
    served = requests.post(f"{jsipfs.url}/cat", params={"arg": content}, timeout=30)
    assert served.status_code == 200 and served.content != data
    assert len(served.content) == len(data)
    # verification refuses it, at the first bad leaf when the leaf digests are known
    node = IpfsStore(jsipfs.api, timeout=30)
    with pytest.raises(ContentMismatch, match="near offset 262144"):
        cid.verify(node.cat(content), content, leaf_digests=node.leaf_digests(content))
    with pytest.raises(ContentMismatch, match="content refused"):
        cid.verify(node.cat(content), content)
