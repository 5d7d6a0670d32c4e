"""The verified model cache over real stores: tampering refused, fetches coalesced,
the byte bound held, state kept across restarts."""

from __future__ import annotations

import io
import os
import subprocess
import threading

import pytest
import requests

from storage import car, cid, unixfs
from storage.cache import ModelCache
from storage.errors import ContentMismatch, ContentTooLarge, StoreUnavailable
from storage.ipfs import IpfsStore
from storage.local import LocalStore
from tests.integration.test_storage_ipfs import car_text, pseudo_random
from tests.support.launchers import start_jsipfs
from tests.support.paths import JSIPFS

MiB = 1 << 20


@pytest.fixture
def local(tmp_path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def leftovers(cache: ModelCache) -> list[str]:
    return sorted(p.name for p in (cache.root / "files").iterdir()) + sorted(
        p.name for p in (cache.root / "tmp").iterdir()
    )


def test_fetch_once_then_hit(local, tmp_path):
    data = pseudo_random(MiB + 7)
    content = local.add(io.BytesIO(data))
    cache = ModelCache(tmp_path / "cache", local, 10 * MiB)
    progress: list[int] = []
    path = cache.get(content, on_bytes=progress.append)
    assert path.read_bytes() == data
    assert sum(progress) == len(data)
    assert cache.get(content) == path
    assert cache.fetches == 1


def test_tampered_content_from_js_ipfs_is_refused(jsipfs, tmp_path):
    data = pseudo_random(3 * 256 * 1024 + 1, seed=99)
    blocks = list(unixfs.file_blocks(io.BytesIO(data)))
    root, leaf = blocks[-1], blocks[0]
    bad = unixfs.Block(leaf.cid, bytes([leaf.data[0] ^ 0x80]) + leaf.data[1:])
    buf = io.BytesIO()
    car.write(buf, root.cid, [bad, *blocks[1:]])
    resp = requests.post(
        f"{jsipfs.url}/dag/import",
        files={"file": ("t.car", buf.getvalue(), "application/vnd.ipld.car")},
        timeout=30,
    )
    assert resp.status_code == 200  # the node accepts the altered block
    content = cid.normalize(car_text(root.cid))
    cache = ModelCache(tmp_path / "cache", IpfsStore(jsipfs.api, timeout=30), 10 * MiB)
    with pytest.raises(ContentMismatch) as info:
        cache.get(content)
    assert content in info.value.message and "content refused" in info.value.message
    assert content not in cache
    assert leftovers(cache) == []
    assert cache.used_bytes == 0


def test_content_altered_on_the_stores_disk_is_refused(local, tmp_path):
    content = local.add(io.BytesIO(pseudo_random(100_000)))
    blob = local.root / "blobs" / content
    raw = bytearray(blob.read_bytes())
    raw[50_000] ^= 1
    blob.write_bytes(bytes(raw))
    cache = ModelCache(tmp_path / "cache", local, MiB)
    with pytest.raises(ContentMismatch):
        cache.get(content)
    assert leftovers(cache) == []


def test_concurrent_requests_share_one_fetch(jsipfs, tmp_path):
    store = IpfsStore(jsipfs.api, timeout=60)
    data = pseudo_random(20 * MiB, seed=3)
    content = store.add(io.BytesIO(data))
    cache = ModelCache(tmp_path / "cache", store, 64 * MiB)
    barrier = threading.Barrier(8)
    paths: list[object] = []

    def worker() -> None:
        barrier.wait()
        paths.append(cache.get(content))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(paths) == 8 and len(set(paths)) == 1
    assert cache.fetches == 1


def test_byte_bound_evicts_lru_and_never_grows_past_it(local, tmp_path):
    bound = 3 * MiB
    contents = [local.add(io.BytesIO(pseudo_random(MiB, seed=i))) for i in range(5)]
    cache = ModelCache(tmp_path / "cache", local, bound)
    peak = 0

    def watch(_n: int) -> None:
        nonlocal peak
        peak = max(peak, cache.used_bytes, _disk(cache))

    for c in contents[:3]:
        cache.get(c, on_bytes=watch)
    cache.get(contents[0])  # now contents[1] is the least recently used
    cache.get(contents[3], on_bytes=watch)
    assert contents[1] not in cache
    assert all(c in cache for c in (contents[0], contents[2], contents[3]))
    cache.get(contents[4], on_bytes=watch)
    assert peak <= bound
    assert _disk(cache) <= bound


def _disk(cache: ModelCache) -> int:
    return sum(p.stat().st_size for d in ("files", "tmp") for p in (cache.root / d).iterdir())


def test_content_larger_than_the_cache_is_refused(local, tmp_path):
    small = local.add(io.BytesIO(pseudo_random(MiB, seed=1)))
    big = local.add(io.BytesIO(pseudo_random(3 * MiB, seed=2)))
    cache = ModelCache(tmp_path / "cache", local, 2 * MiB)
    cache.get(small)
    with pytest.raises(ContentTooLarge, match="larger than the model cache"):
        cache.get(big)
    assert big not in cache
    assert _disk(cache) <= 2 * MiB


def test_cache_survives_a_restart_with_its_lru_order(local, tmp_path):
    contents = [local.add(io.BytesIO(pseudo_random(MiB, seed=10 + i))) for i in range(3)]
    first = ModelCache(tmp_path / "cache", local, 3 * MiB)
    for c in contents:
        first.get(c)
    first.get(contents[0])
    second = ModelCache(tmp_path / "cache", local, 3 * MiB)
    assert all(c in second for c in contents)
    second.get(local.add(io.BytesIO(pseudo_random(MiB, seed=99))))
    assert contents[1] not in second  # the least recently used before the restart
    assert second.fetches == 1


def test_dead_store_is_a_clear_error(tmp_path):
    node = start_jsipfs(JSIPFS, tmp_path / "repo")
    store = IpfsStore(node.api, timeout=5)
    content = store.add(io.BytesIO(b"model bytes"))
    node.stop()
    cache = ModelCache(tmp_path / "cache", store, MiB)
    with pytest.raises(StoreUnavailable, match="cannot reach the IPFS node"):
        cache.get(content)
    assert leftovers(cache) == []


def test_a_new_worker_cleans_dead_downloads_but_not_a_live_workers(local, tmp_path):
    """A server's workers share the cache folder: a worker starting must not delete the
    download another worker is writing, only what a dead process left behind."""
    cache = ModelCache(tmp_path / "cache", local, 10 * MiB)
    child = subprocess.Popen(["true"])  # its pid: a process that is gone
    child.wait()
    (cache.root / "tmp" / f"{child.pid}-partial").write_bytes(b"x")
    (cache.root / "tmp" / f"{os.getpid()}-writing").write_bytes(b"y")
    ModelCache(tmp_path / "cache", local, 10 * MiB)  # another worker starts
    assert leftovers(cache) == [f"{os.getpid()}-writing"]
