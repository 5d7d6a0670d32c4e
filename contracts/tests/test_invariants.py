"""Stateful property test: random sequences of every marketplace action, and of
EIP-3009 transfers with authorization (fresh, replayed, expired, forged), with the
money and permission invariants checked after each step."""

import os

import brownie
from brownie import chain
from conftest import MAX_CALLS, META_CID, MODEL_CID
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from test_eip3009 import authorize, vrs

ACTORS = 6  # accounts[2..7] are funded buyers and sellers alike


actor = st.integers(0, ACTORS - 1)
price = st.integers(1, 10**18) | st.integers(1, 10**6)
# mostly small; some at the on-chain cap (MAX_CALLS_PER_PURCHASE) and some above it
calls = (
    st.integers(1, 1_000)
    | st.integers(MAX_CALLS - 2, MAX_CALLS + 2)
    | st.integers(MAX_CALLS + 1, 2**256 - 1)
)
fee = st.integers(0, 2_000)  # half of these are above the cap
pick = st.integers(0, 2**32)


# brownie 1.22's own `state_machine` fixture fails its compiled type checks, so this
# drives hypothesis directly, with a chain snapshot revert before every example.
class MarketMachine(RuleBasedStateMachine):
    accounts = market = token = owner = treasury = payer = settler = None

    def __init__(self):
        super().__init__()
        chain.revert()
        self.people = [self.accounts[2 + i] for i in range(ACTORS)]
        self.start = {p.address: self.token.balanceOf(p) for p in self.people}
        self.sellers = {}  # model id -> seller address, as listed
        self.paid = 0  # total buyers paid
        self.withdrawn = 0  # total sellers withdrew
        self.fees_out = 0  # total fees sent to the treasury
        self.purchases = 0
        self.payer_start = self.token.balanceOf(self.payer)
        self.authorized_in = 0  # what people received by authorization
        self.used = []  # (args, signature) of authorizations that went through
        self.per_call = 0  # what the payer paid for calls, settled by the settler

    def _model(self, pick):
        return sorted(self.sellers)[pick % len(self.sellers)] if self.sellers else None

    # ------------------------------------------------------------------ rules

    @rule(actor=actor, price=price)
    def list_model(self, actor, price):
        who = self.people[actor]
        if self.market.paused():
            with brownie.reverts():
                self.market.listModel(MODEL_CID, META_CID, self.token, price, {"from": who})
            return
        tx = self.market.listModel(MODEL_CID, META_CID, self.token, price, {"from": who})
        self.sellers[tx.return_value] = who.address

    @rule(actor=actor, pick=pick, calls=calls)
    def purchase(self, actor, pick, calls):
        if not self.sellers and not self.market.paused():
            self.list_model(actor=(actor + 1) % ACTORS, price=pick % 10**6 + 1)
        mid = self._model(pick)
        if mid is None:
            return
        who = self.people[actor]
        _, active, _, price, _, _ = self.market.getListing(mid)
        amount = price * calls
        self.token.approve(self.market, min(amount, 2**256 - 1), {"from": who})
        paused = self.market.paused()
        if paused or not active or calls > MAX_CALLS or self.token.balanceOf(who) < amount:
            before = self.token.balanceOf(who)
            held = self.token.balanceOf(self.market)
            if not paused and active and calls > MAX_CALLS:
                # above the cap: refused whatever the buyer holds, with the values
                refused = brownie.reverts(revert_pattern=f"TooManyCalls: {calls}, {MAX_CALLS}")
            else:
                refused = brownie.reverts()
            with refused:
                self.market.purchase(mid, calls, price, {"from": who})
            assert self.token.balanceOf(who) == before
            assert self.token.balanceOf(self.market) == held
            return
        tx = self.market.purchase(mid, calls, price, {"from": who})
        ev = tx.events["Purchased"]
        assert ev["amount"] == amount
        assert ev["fee"] * 10_000 <= amount * self.market.MAX_FEE_BPS()
        self.paid += amount
        self.purchases += 1

    @rule(actor=actor, pick=pick, price=price)
    def set_price(self, actor, pick, price):
        mid = self._model(pick)
        if mid is None:
            return
        who = self.people[actor]
        if who.address != self.sellers[mid]:
            with brownie.reverts():
                self.market.setPrice(mid, price, {"from": who})
        else:
            self.market.setPrice(mid, price, {"from": who})

    @rule(actor=actor, pick=pick)
    def delist_or_relist(self, actor, pick):
        mid = self._model(pick)
        if mid is None:
            return
        who = self.people[actor]
        active = self.market.getListing(mid)[1]
        if who.address != self.sellers[mid]:
            with brownie.reverts():
                (self.market.delist if active else self.market.relist)(mid, {"from": who})
        elif active:
            self.market.delist(mid, {"from": who})
        elif not self.market.paused():
            self.market.relist(mid, {"from": who})

    @rule(pick=pick)
    def owner_meddles(self, pick):
        # The owner tries to change someone's listing: always refused.
        mid = self._model(pick)
        if mid is None:
            return
        with brownie.reverts():
            self.market.setPrice(mid, 1, {"from": self.owner})
        with brownie.reverts():
            self.market.delist(mid, {"from": self.owner})

    @rule(actor=actor)
    def withdraw(self, actor):
        who = self.people[actor]
        owed = self.market.earnings(who, self.token)
        if owed == 0:
            with brownie.reverts():
                self.market.withdraw(self.token, {"from": who})
            return
        self.market.withdraw(self.token, {"from": who})  # works paused or not
        self.withdrawn += owed

    @rule()
    def withdraw_fees(self):
        owed = self.market.protocolFees(self.token)
        if owed:
            self.market.withdrawFees(self.token, {"from": self.owner})
            self.fees_out += owed

    @rule(fee=fee)
    def set_fee(self, fee):
        if fee > self.market.MAX_FEE_BPS():
            with brownie.reverts():
                self.market.setFee(fee, {"from": self.owner})
        else:
            self.market.setFee(fee, {"from": self.owner})

    @rule(actor=actor, pick=pick)
    def pause_briefly(self, actor, pick):
        # While paused, purchases revert and withdrawals still pay out.
        was_paused = self.market.paused()
        if not was_paused:
            self.market.pause({"from": self.owner})
        self.purchase(actor=actor, pick=pick, calls=1)
        self.withdraw(actor=actor)
        if not was_paused:
            self.market.unpause({"from": self.owner})

    @rule()
    def toggle_pause(self):
        if self.market.paused():
            self.market.unpause({"from": self.owner})
        else:
            self.market.pause({"from": self.owner})

    @rule(actor=actor, submitter=actor, value=st.integers(1, 10**20), kind=st.integers(0, 3))
    def transfer_with_authorization(self, actor, submitter, value, kind):
        """The payer (a key the test holds) authorizes a payment to a person; someone
        submits it: fresh (it goes through when funded), or a replay, an expired one, or
        one signed by another key (each refused, nothing moves)."""
        to, by = self.people[actor], self.people[submitter]
        # the chain's own clock: snapshots and sleeps move it away from the wall clock
        now = chain[-1].timestamp
        window = {"after": 0, "before": now + 3600}
        if kind == 1 and self.used:  # a replay of a used authorization
            args, signed = self.used[value % len(self.used)]
        elif kind == 2:  # expired
            args, signed = authorize(self.token, self.payer, to, value, after=0, before=now)
        elif kind == 3:  # signed by someone else
            key = "0x" + os.urandom(32).hex()
            args, signed = authorize(self.token, self.payer, to, value, key=key, **window)
        else:
            args, signed = authorize(self.token, self.payer, to, value, **window)
        fresh = kind == 0 or (kind == 1 and not self.used)
        if fresh and self.token.balanceOf(self.payer) >= value:
            self.token.transferWithAuthorization(*args, *vrs(signed), {"from": by})
            self.authorized_in += value
            self.used.append((args, signed))
            return
        before = self.token.balanceOf(self.payer)
        with brownie.reverts():
            self.token.transferWithAuthorization(*args, *vrs(signed), {"from": by})
        assert self.token.balanceOf(self.payer) == before

    @rule(pick=pick, value=st.integers(1, 10**20), kind=st.integers(0, 2))
    def settle_per_call(self, pick, value, kind):
        """The payer authorizes a per-call payment to the marketplace; the settler
        settles it (fresh: credited to the model's seller when funded, listed and not
        paused), or settles a used one again, or a stranger tries to (refused)."""
        mid = self._model(pick)
        if mid is None:
            return
        now = chain[-1].timestamp
        if kind == 1 and self.used:
            args, signed = self.used[value % len(self.used)]
        else:
            args, signed = authorize(
                self.token, self.payer, self.market, value, after=0, before=now + 3600
            )
        by = self.settler if kind != 2 else self.people[pick % ACTORS]
        call = (mid, args[0], args[2], args[3], args[4], args[5], signed.signature, {"from": by})
        fresh = kind == 0 or (kind == 1 and not self.used)
        funded = self.token.balanceOf(self.payer) >= value
        if fresh and funded and not self.market.paused():
            tx = self.market.settlePerCall(*call)
            assert tx.events["PaidPerCall"]["amount"] == value
            self.per_call += value
            self.used.append((args, signed))
            return
        before = self.token.balanceOf(self.payer), self.token.balanceOf(self.market)
        with brownie.reverts():
            self.market.settlePerCall(*call)
        assert (self.token.balanceOf(self.payer), self.token.balanceOf(self.market)) == before

    # ------------------------------------------------------------- invariants

    @invariant()
    def tokens_conserved(self):
        owed = sum(self.market.earnings(p, self.token) for p in self.people)
        fees = self.market.protocolFees(self.token)
        held = self.token.balanceOf(self.market)
        assert held == owed + fees
        assert self.market.owed(self.token) == owed + fees
        assert self.paid + self.per_call == owed + fees + self.withdrawn + self.fees_out
        assert self.token.balanceOf(self.treasury) == self.fees_out
        spent = sum(self.start[p.address] - self.token.balanceOf(p) for p in self.people)
        assert spent == self.paid - self.withdrawn - self.authorized_in

    @invariant()
    def authorizations_used_once(self):
        spent = self.authorized_in + self.per_call
        assert self.token.balanceOf(self.payer) == self.payer_start - spent
        for args, _ in self.used:
            assert self.token.authorizationState(args[0], args[5])

    @invariant()
    def fee_capped(self):
        assert self.market.feeBps() <= self.market.MAX_FEE_BPS()

    @invariant()
    def sellers_unchanged(self):
        for mid, seller in self.sellers.items():
            assert self.market.getListing(mid)[0] == seller


def test_marketplace_invariants(accounts, market, token, owner, treasury):
    MarketMachine.accounts, MarketMachine.market, MarketMachine.token = accounts, market, token
    MarketMachine.owner, MarketMachine.treasury = owner, treasury
    payer = accounts.add()  # a key the test holds, to sign EIP-3009 authorizations
    token.transfer(payer, 10**21, {"from": owner})
    MarketMachine.payer = payer
    market.setSettler(accounts[9], True, {"from": owner})
    MarketMachine.settler = accounts[9]
    chain.snapshot()
    run_state_machine_as_test(
        MarketMachine,
        settings=settings(
            max_examples=25,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
