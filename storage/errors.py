"""Storage's exceptions. Each carries a stable `code`; the marketplace maps them to HTTP
and the CLI with the rest of its domain errors."""

from __future__ import annotations


class StorageError(Exception):
    """Base of every storage error."""

    code = "storage_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidCid(StorageError):
    """The text is not a CID."""

    code = "invalid_cid"


class ContentNotFound(StorageError):
    """The store does not have the content (or could not find it in time)."""

    code = "content_not_found"


class ContentMismatch(StorageError):
    """Bytes do not hash to the CID they were served as."""

    code = "content_mismatch"


class ContentTooLarge(StorageError):
    """The content is larger than the caller allows."""

    code = "content_too_large"


class StoreUnavailable(StorageError):
    """The store (an IPFS node) cannot be reached or gave a broken answer."""

    code = "store_unavailable"


class StoreTimeout(StoreUnavailable):
    """The store did not answer in time."""

    code = "store_timeout"


class CacheDiskFull(StorageError):
    """The disk under the model cache has no room for the file (ENOSPC): the models
    already cached still serve; nothing was left half-written."""

    code = "cache_disk_full"


class InvalidCar(StorageError):
    """A CAR file is malformed, has a block that does not match its CID, or is incomplete."""

    code = "invalid_car"
