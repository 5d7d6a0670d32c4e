"""Fixtures for the contract tests: a fresh token and marketplace on brownie's anvil."""

import pytest

FEE_BPS = 250
PRICE = 10**16
MODEL_CID = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
META_CID = "bafkreidgvpkjawlxz6sffxzwgooowe5yt7i6wsyg236mfoks77nywkptdq"
BUYER_FUNDS = 10**24
# MAX_CALLS_PER_PURCHASE: marketplace/payments/prepaid/ledger.py's MAX_CREDITED_CALLS
MAX_CALLS = 10**15


@pytest.fixture(autouse=True)
def isolation(fn_isolation):
    """Every test starts from the module's deployment (evm snapshot/revert)."""


@pytest.fixture(scope="module")
def owner(accounts):
    return accounts[0]


@pytest.fixture(scope="module")
def seller(accounts):
    return accounts[1]


@pytest.fixture(scope="module")
def buyer(accounts):
    return accounts[2]


@pytest.fixture(scope="module")
def treasury(accounts):
    return accounts[8]


@pytest.fixture(scope="module")
def stranger(accounts):
    return accounts[4]


@pytest.fixture(scope="module")
def token(MarketToken, owner, buyer, accounts):
    t = MarketToken.deploy(owner, 10**27, {"from": owner})
    for i in range(2, 8):  # buyers; the treasury (8) and accounts[9] start with none
        t.transfer(accounts[i], BUYER_FUNDS, {"from": owner})
    return t


@pytest.fixture(scope="module")
def market(ModelMarketplace, owner, treasury, token):
    m = ModelMarketplace.deploy(owner, treasury, FEE_BPS, {"from": owner})
    m.setTokenAllowed(token, True, {"from": owner})
    return m


@pytest.fixture
def model_id(market, token, seller):
    """A model listed by `seller` at PRICE."""
    return market.listModel(MODEL_CID, META_CID, token, PRICE, {"from": seller}).return_value
