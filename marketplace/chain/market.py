"""The typed binding of one ModelMarketplace deployment and its token: every contract
call the domain makes, reverts raised as domain errors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_utils.address import to_checksum_address
from web3 import Web3
from web3.contract import Contract
from web3.contract.contract import ContractFunction
from web3.types import TxReceipt

from marketplace import errors
from marketplace.chain.artifacts import Deployment, load_artifact
from marketplace.chain.logs import Event, EventDecoder
from marketplace.chain.reverts import revert_errors
from marketplace.chain.transactions import Signer, calldata, deploy, rpc_errors, send

# -------------------------------------------------------------- the contracts


def deploy_marketplace(
    w3: Web3,
    signer: Signer,
    artifacts_dir: Path,
    *,
    fee_bps: int,
    treasury: str | None = None,
    token_supply: int = 10**27,
    timeout: float = 120.0,
) -> Deployment:
    """Deploy MarketToken, ModelMarketplace (allowlisting the token; the signer owns
    both) and the UsageAnchors of this marketplace."""
    token_art = load_artifact(artifacts_dir, "MarketToken")
    market_art = load_artifact(artifacts_dir, "ModelMarketplace")
    treasury = treasury or signer.address
    token, receipt = deploy(
        w3, token_art, signer, artifacts_dir, signer.address, token_supply, timeout=timeout
    )
    market, _ = deploy(
        w3, market_art, signer, artifacts_dir, signer.address, treasury, fee_bps, timeout=timeout
    )
    contract = w3.eth.contract(address=market, abi=market_art.abi)
    send(
        w3, contract.functions.setTokenAllowed(token, True), signer, artifacts_dir, timeout=timeout
    )
    anchors_art = load_artifact(artifacts_dir, "UsageAnchors")
    anchors, _ = deploy(w3, anchors_art, signer, artifacts_dir, market, timeout=timeout)
    return Deployment(
        chain_id=w3.eth.chain_id,
        marketplace=market,
        token=token,
        start_block=receipt["blockNumber"],
        owner=signer.address,
        treasury=treasury,
        anchors=anchors,
    )


@dataclass(frozen=True)
class OnchainListing:
    """A listing as the contract holds it."""

    model_id: int
    seller: str
    active: bool
    token: str
    price_per_call: int
    model_cid: str
    metadata_cid: str


class Marketplace:
    """Typed calls on one deployment of ModelMarketplace and its token.

    Every state-changing call takes the Signer that pays for it; reverts come back as
    domain errors (ModelNotFound, NotSeller, PriceAboveMax, MarketplacePaused, ...).
    """

    def __init__(
        self, w3: Web3, deployment: Deployment, artifacts_dir: Path, *, timeout: float = 120.0
    ) -> None:
        self.w3 = w3
        self.deployment = deployment
        self.artifacts_dir = artifacts_dir
        self.timeout = timeout
        abi = load_artifact(artifacts_dir, "ModelMarketplace").abi
        self.contract = w3.eth.contract(
            address=to_checksum_address(deployment.marketplace), abi=abi
        )
        self.events = EventDecoder(abi, self.contract.address)
        self._token_abi = load_artifact(artifacts_dir, "MarketToken").abi
        self._domains: dict[str, Any] = {}  # token -> its EIP-712 domain
        self._tokens: dict[str, Contract] = {}
        self._decimals: dict[str, int] = {}
        self._symbols: dict[str, str] = {}
        self.token = self.token_contract(deployment.token)

    def token_contract(self, address: str) -> Contract:
        """An ERC-20 (with permit) at `address` (built once per address: ~2 ms each)."""
        address = to_checksum_address(address)
        contract = self._tokens.get(address)
        if contract is None:
            contract = self._tokens[address] = self.w3.eth.contract(
                address=address, abi=self._token_abi
            )
        return contract

    def read_uint(self, to: str, data: str) -> int:
        """A uint256 view by a bare `eth_call` (web3's call path adds ~5 ms of formatting
        and checks; unauthenticated purchase preparation makes this call)."""
        with rpc_errors():
            answer = self.w3.provider.make_request(
                "eth_call",  # type: ignore[arg-type]
                [{"to": to, "data": data}, "latest"],
            )
        if "error" in answer or not isinstance(answer.get("result"), str):
            raise errors.ChainError(f"the chain refused a read of {to}")
        return int(answer["result"], 16)

    def _send(self, call: ContractFunction, signer: Signer) -> TxReceipt:
        return send(self.w3, call, signer, self.artifacts_dir, timeout=self.timeout)

    def _call(self, call: ContractFunction) -> Any:
        with rpc_errors(), revert_errors(self.artifacts_dir):
            return call.call()

    # sellers

    def list_model(
        self,
        signer: Signer,
        model_cid: str,
        metadata_cid: str,
        price_per_call: int,
        token: str | None = None,
    ) -> tuple[int, TxReceipt]:
        """List a model; returns (model id, receipt)."""
        receipt = self._send(
            self.contract.functions.listModel(
                model_cid,
                metadata_cid,
                to_checksum_address(token or self.deployment.token),
                price_per_call,
            ),
            signer,
        )
        (event,) = self.events.decode(receipt["logs"], "ModelListed")
        return int(event.args["modelId"]), receipt

    def set_price(self, signer: Signer, model_id: int, price_per_call: int) -> TxReceipt:
        """Change a listing's price (its seller only)."""
        return self._send(self.contract.functions.setPrice(model_id, price_per_call), signer)

    def delist(self, signer: Signer, model_id: int) -> TxReceipt:
        """Stop selling a listing (its seller only)."""
        return self._send(self.contract.functions.delist(model_id), signer)

    def relist(self, signer: Signer, model_id: int) -> TxReceipt:
        """Sell a delisted listing again (its seller only)."""
        return self._send(self.contract.functions.relist(model_id), signer)

    def withdraw(self, signer: Signer, token: str | None = None) -> TxReceipt:
        """Withdraw the signer's earnings in `token`."""
        address = to_checksum_address(token or self.deployment.token)
        return self._send(self.contract.functions.withdraw(address), signer)

    # buyers

    def approve(self, signer: Signer, amount: int, token: str | None = None) -> TxReceipt:
        """Let the marketplace pull `amount` of `token` from the signer."""
        erc20 = self.token_contract(token) if token else self.token
        return self._send(erc20.functions.approve(self.contract.address, amount), signer)

    def purchase(
        self, signer: Signer, model_id: int, calls: int, max_price_per_call: int
    ) -> TxReceipt:
        """Buy `calls` calls; the allowance must already be in place."""
        return self._send(
            self.contract.functions.purchase(model_id, calls, max_price_per_call), signer
        )

    def permit_typed_data(
        self, owner: str, value: int, deadline: int, token: str | None = None
    ) -> dict[str, Any]:
        """The EIP-2612 Permit typed data a wallet signs for the marketplace to spend `value`."""
        erc20 = self.token_contract(token) if token else self.token
        name, version, chain_id, verifying = self.eip712_domain(erc20.address)
        nonce = self.read_uint(
            erc20.address, calldata("nonces(address)", to_checksum_address(owner))
        )
        return {
            "types": {
                "EIP712Domain": [
                    {"name": "name", "type": "string"},
                    {"name": "version", "type": "string"},
                    {"name": "chainId", "type": "uint256"},
                    {"name": "verifyingContract", "type": "address"},
                ],
                "Permit": [
                    {"name": "owner", "type": "address"},
                    {"name": "spender", "type": "address"},
                    {"name": "value", "type": "uint256"},
                    {"name": "nonce", "type": "uint256"},
                    {"name": "deadline", "type": "uint256"},
                ],
            },
            "primaryType": "Permit",
            "domain": {
                "name": name,
                "version": version,
                "chainId": chain_id,
                "verifyingContract": verifying,
            },
            "message": {
                "owner": to_checksum_address(owner),
                "spender": self.contract.address,
                "value": value,
                "nonce": nonce,
                "deadline": deadline,
            },
        }

    def eip712_domain(self, token: str | None = None) -> tuple[str, str, int, str]:
        """`token`'s EIP-712 domain (name, version, chain id, verifying contract), by
        ERC-5267: fixed at its deployment, so read once per process."""
        erc20 = self.token_contract(token) if token else self.token
        domain = self._domains.get(erc20.address)
        if domain is None:
            with rpc_errors(), revert_errors(self.artifacts_dir):  # a token without ERC-5267
                domain = self._domains[erc20.address] = erc20.functions.eip712Domain().call()
        _, name, version, chain_id, verifying, _, _ = domain
        return str(name), str(version), int(chain_id), str(verifying)

    def purchase_with_permit(
        self,
        signer: Signer,
        model_id: int,
        calls: int,
        max_price_per_call: int,
        *,
        deadline: int,
    ) -> TxReceipt:
        """Buy with a permit signed here by the buyer's own key (no separate approve)."""
        listing = self.listing(model_id)
        value = calls * listing.price_per_call
        typed = self.permit_typed_data(signer.address, value, deadline, listing.token)
        v, r, s = signer.sign_typed_data(typed)
        return self._send(
            self.contract.functions.purchaseWithPermit(
                model_id, calls, max_price_per_call, value, deadline, v, r, s
            ),
            signer,
        )

    def supports_permit(self, token: str | None = None) -> bool:
        """Whether `token` takes EIP-2612 permits we can sign: it names its EIP-712 domain
        (ERC-5267) and counts nonces. Many allowlisted stablecoins do neither."""
        address = to_checksum_address(token or self.deployment.token)
        probes = (calldata("eip712Domain()"), calldata("nonces(address)", address))
        for data in probes:
            with rpc_errors():
                answer = self.w3.provider.make_request(
                    "eth_call",  # type: ignore[arg-type]
                    [{"to": address, "data": data}, "latest"],
                )
            result = answer.get("result")
            # a revert comes back as an error; a contract without the function and with
            # no fallback reverts too; an account with no code answers "0x"
            if "error" in answer or not isinstance(result, str) or len(result) < 66:
                return False
        return True

    def buy(
        self, signer: Signer, model_id: int, calls: int, max_price_per_call: int, *, deadline: int
    ) -> TxReceipt:
        """Buy `calls` calls in one transaction with a permit when the listing's token takes
        one; otherwise approve (only when the allowance falls short), then purchase."""
        listing = self.listing(model_id)
        if self.supports_permit(listing.token):
            return self.purchase_with_permit(
                signer, model_id, calls, max_price_per_call, deadline=deadline
            )
        value = calls * listing.price_per_call
        allowance = self.read_uint(
            listing.token,
            calldata(
                "allowance(address,address)",
                to_checksum_address(signer.address),
                self.contract.address,
            ),
        )
        if allowance < value:
            self.approve(signer, value, listing.token)
        return self.purchase(signer, model_id, calls, max_price_per_call)

    # owner

    def pause(self, signer: Signer) -> TxReceipt:
        """Stop listings and purchases (owner only)."""
        return self._send(self.contract.functions.pause(), signer)

    def unpause(self, signer: Signer) -> TxReceipt:
        """Undo `pause` (owner only)."""
        return self._send(self.contract.functions.unpause(), signer)

    def set_fee(self, signer: Signer, fee_bps: int) -> TxReceipt:
        """Set the protocol fee (owner only, capped by the contract)."""
        return self._send(self.contract.functions.setFee(fee_bps), signer)

    # views

    def listing(self, model_id: int) -> OnchainListing:
        """The listing `model_id`; ModelNotFound if there is none."""
        seller, active, token, price, model_cid, metadata_cid = self._call(
            self.contract.functions.getListing(model_id)
        )
        return OnchainListing(model_id, seller, active, token, price, model_cid, metadata_cid)

    def listing_count(self) -> int:
        """How many listings were ever made (ids run from 1)."""
        return int(self._call(self.contract.functions.listingCount()))

    def token_decimals(self, token: str | None = None) -> int:
        """The ERC-20's `decimals()` (read once per token)."""
        address = to_checksum_address(token or self.deployment.token)
        if address not in self._decimals:
            self._decimals[address] = int(
                self._call(self.token_contract(address).functions.decimals())
            )
        return self._decimals[address]

    def token_symbol(self, token: str | None = None) -> str:
        """The ERC-20's `symbol()` (read once per token; untrusted text: escape it)."""
        address = to_checksum_address(token or self.deployment.token)
        if address not in self._symbols:
            symbol = self._call(self.token_contract(address).functions.symbol())
            self._symbols[address] = str(symbol)[:16]
        return self._symbols[address]

    def earnings(self, seller: str, token: str | None = None) -> int:
        """What `seller` can withdraw in `token`."""
        return int(
            self._call(
                self.contract.functions.earnings(
                    to_checksum_address(seller), to_checksum_address(token or self.deployment.token)
                )
            )
        )

    def token_balance(self, account: str, token: str | None = None) -> int:
        """`account`'s balance of `token`."""
        erc20 = self.token_contract(token) if token else self.token
        return int(self._call(erc20.functions.balanceOf(to_checksum_address(account))))

    def purchases(self, receipt: TxReceipt) -> list[Event]:
        """The Purchased events the marketplace emitted in `receipt`."""
        return self.events.decode(receipt["logs"], "Purchased")
