"""MarketToken's EIP-3009 transfers with authorization, the way x402's `exact` scheme
uses them: signed off-chain by the payer, submitted by anyone, each nonce once."""

import os

import brownie
import pytest
from brownie import chain
from eth_account import Account
from eth_account.messages import encode_typed_data

TRANSFER = "TransferWithAuthorization"
RECEIVE = "ReceiveWithAuthorization"
FIELDS = [
    {"name": "from", "type": "address"},
    {"name": "to", "type": "address"},
    {"name": "value", "type": "uint256"},
    {"name": "validAfter", "type": "uint256"},
    {"name": "validBefore", "type": "uint256"},
    {"name": "nonce", "type": "bytes32"},
]


def _domain(token):
    return {
        "name": token.name(),
        "version": token.version(),
        "chainId": chain.id,
        "verifyingContract": token.address,
    }


def _sign(token, key, primary, fields, message):
    data = {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            primary: fields,
        },
        "primaryType": primary,
        "domain": _domain(token),
        "message": message,
    }
    return Account.sign_message(encode_typed_data(full_message=data), key)


def authorize(
    token, payer, to, value, *, after=None, before=None, nonce=None, kind=TRANSFER, key=None
):
    """(args without the signature, the signature) for an authorization by `payer`."""
    now = chain.time()
    message = {
        "from": payer.address,
        "to": to.address,
        "value": value,
        "validAfter": now - 60 if after is None else after,
        "validBefore": now + 3600 if before is None else before,
        "nonce": nonce or os.urandom(32),
    }
    signed = _sign(token, key or payer.private_key, kind, FIELDS, message)
    args = [message[k] for k in ("from", "to", "value", "validAfter", "validBefore", "nonce")]
    return args, signed


def vrs(signed):
    return [signed.v, signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big")]


@pytest.fixture
def payer(accounts, token, owner):
    holder = accounts.add()
    owner.transfer(holder, "1 ether")
    token.transfer(holder, 1000, {"from": owner})
    return holder


def test_the_domain_is_what_x402_clients_read(token):
    assert token.name() == "ModelMarket Token"
    assert token.version() == "1"
    domain = token.eip712Domain()
    assert (domain[1], domain[2], domain[3], domain[4]) == (
        "ModelMarket Token",
        "1",
        chain.id,
        token.address,
    )


def test_anyone_submits_a_signed_transfer_once(token, payer, seller, stranger):
    args, signed = authorize(token, payer, seller, 300)
    tx = token.transferWithAuthorization(*args, *vrs(signed), {"from": stranger})
    assert token.balanceOf(seller) == 300 and token.balanceOf(payer) == 700
    assert tx.events["AuthorizationUsed"]["authorizer"] == payer.address
    assert tx.events["AuthorizationUsed"]["nonce"] == "0x" + args[5].hex()
    assert token.authorizationState(payer, args[5]) is True
    with brownie.reverts():  # AuthorizationAlreadyUsed
        token.transferWithAuthorization(*args, *vrs(signed), {"from": stranger})
    assert token.balanceOf(seller) == 300


def test_the_bytes_form_takes_the_same_signature(token, payer, seller, stranger):
    args, signed = authorize(token, payer, seller, 5)
    token.transferWithAuthorization(*args, bytes(signed.signature), {"from": stranger})
    assert token.balanceOf(seller) == 5
    with brownie.reverts():  # the v,r,s form shares the nonce
        token.transferWithAuthorization(*args, *vrs(signed), {"from": stranger})


def test_time_window_is_enforced(token, payer, seller):
    now = chain.time()
    args, signed = authorize(token, payer, seller, 1, after=now + 600)
    with brownie.reverts():  # AuthorizationNotYetValid
        token.transferWithAuthorization(*args, *vrs(signed), {"from": seller})
    args, signed = authorize(token, payer, seller, 1, after=now - 600, before=now - 1)
    with brownie.reverts():  # AuthorizationExpired
        token.transferWithAuthorization(*args, *vrs(signed), {"from": seller})
    assert token.balanceOf(seller) == 0


def test_a_signature_by_another_key_or_over_other_terms_is_refused(token, payer, seller, accounts):
    other = accounts.add()
    args, signed = authorize(token, payer, seller, 10, key=other.private_key)
    with brownie.reverts():  # InvalidAuthorizationSignature
        token.transferWithAuthorization(*args, *vrs(signed), {"from": seller})
    args, signed = authorize(token, payer, seller, 10)
    args[2] = 11  # the payee asks for more than was signed
    with brownie.reverts():
        token.transferWithAuthorization(*args, *vrs(signed), {"from": seller})
    assert token.balanceOf(seller) == 0
    assert token.authorizationState(payer, args[5]) is False  # a refusal uses no nonce


def test_more_than_the_balance_moves_nothing(token, payer, seller):
    args, signed = authorize(token, payer, seller, 1001)
    with brownie.reverts():  # ERC20InsufficientBalance
        token.transferWithAuthorization(*args, *vrs(signed), {"from": seller})
    assert token.authorizationState(payer, args[5]) is False


def test_receive_with_authorization_only_by_its_payee(token, payer, seller, stranger):
    args, signed = authorize(token, payer, seller, 7, kind=RECEIVE)
    with brownie.reverts():  # CallerNotPayee: no front-running the payee's own call
        token.receiveWithAuthorization(*args, *vrs(signed), {"from": stranger})
    token.receiveWithAuthorization(*args, *vrs(signed), {"from": seller})
    assert token.balanceOf(seller) == 7
    # a receive authorization is not a transfer authorization
    args, signed = authorize(token, payer, seller, 7, kind=RECEIVE)
    with brownie.reverts():
        token.transferWithAuthorization(*args, *vrs(signed), {"from": stranger})


def test_a_cancelled_authorization_cannot_be_used(token, payer, seller, stranger):
    args, signed = authorize(token, payer, seller, 3)
    nonce = args[5]
    cancel = _sign(
        token,
        payer.private_key,
        "CancelAuthorization",
        [{"name": "authorizer", "type": "address"}, {"name": "nonce", "type": "bytes32"}],
        {"authorizer": payer.address, "nonce": nonce},
    )
    with brownie.reverts():  # only the authorizer's signature cancels
        token.cancelAuthorization(stranger, nonce, *vrs(cancel), {"from": stranger})
    tx = token.cancelAuthorization(payer, nonce, *vrs(cancel), {"from": stranger})
    assert "AuthorizationCanceled" in tx.events
    with brownie.reverts():
        token.transferWithAuthorization(*args, *vrs(signed), {"from": stranger})
    assert token.balanceOf(seller) == 0
