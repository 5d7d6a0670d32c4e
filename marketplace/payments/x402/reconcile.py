"""Finishing x402 payments from the chain alone: what a crash, a timeout or a
front-runner left. A reservation whose worker died before settling is released
(nothing was sent); a settlement sent and not seen mined is looked up by its stored
hash: mined -> settled (its answer still owed), dropped -> sent again, reverted ->
where the authorization went (our own settlement, or someone else's submission whose
price arrived here and is credited to the seller once, or spent elsewhere: failed).
Each worker runs it every RECONCILE_EVERY seconds; a retried request runs it at once.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, Row, select

from marketplace import errors
from marketplace.chain.per_call import Authorization, Settler, SignedSettlement
from marketplace.db.tables import Listing
from marketplace.payments.x402 import settlements

log = logging.getLogger("modelmarket.x402")

SETTLE_MARGIN = 6  # seconds an authorization must still be valid for (as the SDK's facilitator)
RECONCILE_EVERY = 2.0  # seconds between the reconciler's looks at stale rows


class Reconciler:
    """Finishes stale x402 payments of one gateway's database."""

    def __init__(
        self,
        engine: Engine,
        settler: Callable[[], Settler | None],
        *,
        settle_timeout: float,
        reservation_ttl: float,
    ) -> None:
        self.engine = engine
        self.settler = settler
        self.settle_timeout = settle_timeout
        self.reservation_ttl = reservation_ttl
        self._pid = -1
        self._start_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def after_revert(self, settler: Settler, model_id: int, auth: Authorization) -> str | None:
        """A settlement that did not go through: if the authorization was used anyway,
        where it went, as a transaction hash; None when nothing arrived here."""
        token = self._listing_token(model_id)
        if token is None or not settler.used(token, auth.payer, auth.nonce):
            return None
        outcome, tx = settler.outcome(token, auth)
        if outcome == "ours":
            return tx
        if outcome == "arrived":
            # Someone submitted the authorization straight to the token: the price
            # arrived, no seller was credited. Credit it, once.
            try:
                return settler.credit_submitted(model_id, auth, self.settle_timeout)
            except errors.ContractRevert as exc:
                if exc.revert_name == "AuthorizationCredited":
                    return tx
                raise
        return None  # the payer spent this nonce elsewhere: nothing came here

    def _listing_token(self, model_id: int) -> str | None:
        with self.engine.connect() as conn:
            token = conn.execute(select(Listing.token).where(Listing.model_id == model_id))
            found = token.scalar()
        return str(found) if found else None

    def reconcile(self) -> int:
        """Finish what crashes and timeouts left: release reservations whose worker died
        before settling (nothing was sent); settle or fail sent settlements from the
        chain. Returns how many rows it finished. An idle round is one indexed query:
        the chain is touched only for a row that needs it."""
        now = time.time()
        with self.engine.begin() as conn:
            rows = settlements.stale(
                conn,
                reserved_before=now - self.reservation_ttl,
                sending_before=now - self.settle_timeout,
            )
        if not rows:
            return 0
        settler = self.settler() if any(r.status == "sending" for r in rows) else None
        done = 0
        for row in rows:
            with self.engine.begin() as conn:
                if not settlements.touch(conn, row):
                    continue  # another reconciler has it
                if row.status == "reserved":
                    done += settlements.release(conn, row.payer, row.nonce)
                    continue
                if row.status == "settled":  # its worker died mid-answer: owed again
                    done += settlements.undeliver(conn, row.payer, row.nonce)
                    continue
            if settler is not None and self.reconcile_one(row, settler):
                done += 1
        return done

    def reconcile_one(self, row: Row[Any], settler: Settler) -> bool:
        """Settle or fail one sent settlement from the chain; False while it is pending."""
        auth = settlements.authorization(row, settler.market.contract.address)
        receipt = settler.receipt(row.tx_hash) if row.tx_hash else None
        with self.engine.begin() as conn:
            if receipt is not None and receipt["status"] == 1:
                return settlements.settled(conn, row.payer, row.nonce, row.tx_hash, delivered=False)
        if receipt is None and row.tx_hash and settler.pending(row.tx_hash):
            return False  # still in the mempool
        if receipt is None and not settler.used(
            self._listing_token(row.model_id) or "", auth.payer, auth.nonce
        ):
            if settler.chain_time() >= auth.valid_before:  # the chain's clock, not ours
                with self.engine.begin() as conn:
                    return settlements.failed(conn, row.payer, row.nonce, "expired")
            # dropped (a restarted node, a replaced nonce): send it again, anew
            try:
                gas = settler.check(row.model_id, auth)
            except errors.ContractRevert as exc:
                with self.engine.begin() as conn:
                    return settlements.failed(conn, row.payer, row.nonce, _code(exc))

            def record(signed: SignedSettlement) -> None:
                with self.engine.begin() as conn:
                    settlements.sending(conn, row.payer, row.nonce, signed)

            settler.send(row.model_id, auth, gas, record)
            return False
        found = self.after_revert(settler, row.model_id, auth)
        with self.engine.begin() as conn:
            if found is None:
                return settlements.failed(conn, row.payer, row.nonce, "reverted")
            return settlements.settled(conn, row.payer, row.nonce, found, delivered=False)

    def start(self) -> None:
        """Reconcile every RECONCILE_EVERY seconds in this process, from now on (once per
        process: gunicorn may build the app before forking)."""
        if self._pid == os.getpid():
            return
        with self._start_lock:
            if self._pid == os.getpid():
                return
            self._stop = threading.Event()
            thread = threading.Thread(
                target=self._reconcile_loop, name="x402-reconciler", daemon=True
            )
            self._pid = os.getpid()
            self._thread = thread
            thread.start()

    def alive(self) -> bool:
        """Whether this process's reconciler thread runs (health checks ask)."""
        return self._pid == os.getpid() and self._thread is not None and self._thread.is_alive()

    def _reconcile_loop(self) -> None:
        while not self._stop.wait(RECONCILE_EVERY):
            try:
                self.reconcile()
            except errors.ModelMarketError as exc:  # the chain or database is down
                log.warning("x402 reconciliation failed [%s]; retrying", exc.code)
            except Exception:  # a chain or database hiccup: the next round tries again
                log.exception("x402 reconciliation failed; retrying")

    def close(self) -> None:
        """Stop the reconciler (the worker is stopping)."""
        self._stop.set()


def _code(exc: errors.ContractRevert) -> str:
    return (exc.revert_name or "reverted")[:64]
