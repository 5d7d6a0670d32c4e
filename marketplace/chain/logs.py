"""The one decoder of marketplace events. Every path that reads an event (receipt
redemption, the indexer, the chain binding) goes through `EventDecoder.decode`, which
takes a log only if the marketplace's own address emitted it.

Why this module exists: any contract can emit a log shaped exactly like `Purchased`
(same topic0, same indexed fields, same data). web3's `process_receipt` does not filter
by address, so one transaction that touched the marketplace and a forging contract
once redeemed for a million free calls.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from eth_abi.abi import decode as abi_decode
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from hexbytes import HexBytes

log = logging.getLogger("modelmarket.events")

EVENT_NAMES = (
    "ModelListed",
    "PriceChanged",
    "ModelDelisted",
    "ModelRelisted",
    "Purchased",
    "PaidPerCall",
)
SALES = ("Purchased", "PaidPerCall")  # the events that are sales, not listing changes


@dataclass(frozen=True)
class Event:
    """One decoded marketplace event and where it sits on the chain."""

    name: str
    args: dict[str, Any]  # addresses lower-case hex, uint256 as int
    block_number: int
    block_hash: str
    tx_hash: str
    log_index: int


@dataclass(frozen=True)
class _Spec:
    """How to decode one event's log without web3's per-log machinery (~0.7 ms a log;
    this is ~20 us): indexed args from topics, the rest from data with eth_abi."""

    name: str
    indexed: list[tuple[str, str]]
    data: list[tuple[str, str]]

    @classmethod
    def of(cls, item: Mapping[str, Any]) -> _Spec:
        return cls(
            item["name"],
            [(a["name"], a["type"]) for a in item["inputs"] if a["indexed"]],
            [(a["name"], a["type"]) for a in item["inputs"] if not a["indexed"]],
        )

    def decode(self, topics: list[bytes], data: bytes) -> dict[str, Any]:
        if len(topics) != len(self.indexed) + 1:
            raise ValueError(f"{self.name} has {len(self.indexed)} indexed fields")
        args: dict[str, Any] = {}
        for (name, kind), raw in zip(self.indexed, topics[1:], strict=True):
            args[name] = ("0x" + raw[-20:].hex()) if kind == "address" else int.from_bytes(raw)
        values = abi_decode([kind for _, kind in self.data], data, strict=True)
        for (name, kind), value in zip(self.data, values, strict=True):
            args[name] = value.lower() if kind == "address" else value
        return args


class EventDecoder:
    """Decodes the marketplace's events at one address; every other log is dropped."""

    def __init__(self, abi: list[dict[str, Any]], address: str) -> None:
        self.address = to_checksum_address(address)
        self._address = self.address.lower()
        self._specs: dict[bytes, _Spec] = {}
        for item in abi:
            if item.get("type") == "event" and item["name"] in EVENT_NAMES:
                signature = f"{item['name']}({','.join(a['type'] for a in item['inputs'])})"
                self._specs[keccak(text=signature)] = _Spec.of(item)
        missing = set(EVENT_NAMES) - {s.name for s in self._specs.values()}
        if missing:
            raise ValueError(f"the ABI lacks the events {sorted(missing)}")

    def decode(self, logs: Iterable[Mapping[str, Any]], name: str | None = None) -> list[Event]:
        """The marketplace's events among `logs` (only `name` ones if given), in order.

        A log from any other address is never read, whatever it looks like; a log from
        ours that does not decode is skipped and logged (it cannot come from the
        contract we deployed; never stop on it)."""
        out = []
        for entry in logs:
            if str(entry.get("address") or "").lower() != self._address:
                continue
            topics = [bytes(HexBytes(t)) for t in entry.get("topics") or ()]
            spec = self._specs.get(topics[0]) if topics else None
            if spec is None or (name is not None and spec.name != name):
                continue
            try:
                args = spec.decode(topics, bytes(HexBytes(entry["data"])))
            except Exception as exc:  # malformed data: whatever the decoder raised
                log.warning(
                    "skipped an undecodable %s log in tx %s: %s",
                    spec.name,
                    HexBytes(entry["transactionHash"]).to_0x_hex(),
                    type(exc).__name__,
                )
                continue
            out.append(
                Event(
                    name=spec.name,
                    args=args,
                    block_number=int(entry["blockNumber"]),
                    block_hash=HexBytes(entry["blockHash"]).to_0x_hex(),
                    tx_hash=HexBytes(entry["transactionHash"]).to_0x_hex(),
                    log_index=int(entry["logIndex"]),
                )
            )
        return out
