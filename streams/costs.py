"""What a batch costs a model: an online least-squares fit of compute time against the batch's
items and their size, refreshed as batches run. The batcher cuts batches and sheds requests by
its predictions; ``/v1/tasks`` and the metrics show it."""

from __future__ import annotations

import itertools
import time

import numpy as np

MIN_BATCHES = 3
"""Batches seen before predictions are made: before that the batcher neither cuts nor sheds."""
FORGET = 0.98
"""Weight of the past per batch run (about the last 50 batches count): a model whose speed
changes (another process takes a core, a new version) is followed within a second or two."""
SMOOTHING = 0.1
"""EWMA weight of the newest batch in the per-item service time."""
MAX_DELIVERY_MS = 1000.0
"""Longest delivery time one batch counts with."""
REFIT_S = 0.1
"""Once the fit has settled, it is solved again at most this often (a fit costs ~0.3 ms; at
batch 1 a model may run hundreds of batches a second)."""
SETTLING = 20
"""Batches before that bound applies: every one of them is fitted at once."""


class BatchCost:
    """``compute_ms ≈ fixed + per_item · items + per_unit · units``, where ``units`` is the size of
    the batch's inputs (text bytes, tensor elements): a batch of long texts costs more than one
    of short ones. Fitted by exponentially forgotten least squares on the 3 x 3 normal equations,
    every term kept >= 0."""

    def __init__(self, refit_s: float = REFIT_S) -> None:
        self._refit_s = refit_s
        self._xtx = np.zeros((3, 3))
        self._xty = np.zeros(3)
        self._yty = 0.0
        self._coef: tuple[float, float, float] | None = None
        self.batches = 0
        self._fitted_at = -float("inf")
        self.per_item_s: float | None = None
        """Smoothed compute seconds per item (the drain time's service time)."""
        self.delivery_ms = 0.0
        """Smoothed ms from a batch's compute ending to its results written (Redis and Kafka):
        a result is delivered, and its deadline met, only then."""

    def observe(self, items: int, units: int, compute_ms: float) -> None:
        if items <= 0 or not np.isfinite(compute_ms) or compute_ms < 0:
            return
        x = np.array([1.0, float(items), float(units)])
        self._xtx = FORGET * self._xtx + np.outer(x, x)
        self._xty = FORGET * self._xty + x * compute_ms
        self._yty = FORGET * self._yty + compute_ms * compute_ms
        self.batches += 1
        per_item = compute_ms / 1000.0 / items
        self.per_item_s = (
            per_item
            if self.per_item_s is None
            else ((1 - SMOOTHING) * self.per_item_s + SMOOTHING * per_item)
        )
        now = time.monotonic()
        if self.batches >= MIN_BATCHES and (
            self.batches <= SETTLING or now - self._fitted_at >= self._refit_s
        ):
            self._coef = tuple(float(c) for c in self._fit())
            self._fitted_at = now

    def _fit(self) -> np.ndarray:
        """Least squares with every term >= 0 (a cost that falls with batch size is noise): the
        best of the fits over each subset of the terms whose coefficients all come out >= 0."""
        damped = self._xtx + np.diag(1e-9 * np.diag(self._xtx) + 1e-12)
        full = np.linalg.solve(damped, self._xty)
        if (full >= 0).all():  # the usual case: one solve
            return full
        best, best_residual = np.zeros(3), self._yty
        for size in (1, 2):
            for terms in map(list, itertools.combinations(range(3), size)):
                xtx = self._xtx[np.ix_(terms, terms)]
                # damping relative to each term's own scale (bytes or kB fit alike): a run of
                # equal batch sizes makes the terms collinear and must stay solvable
                coef = np.linalg.solve(xtx + np.diag(1e-9 * np.diag(xtx) + 1e-12), self._xty[terms])
                if (coef < 0).any():
                    continue
                full = np.zeros(3)
                full[terms] = coef
                residual = self._yty - 2 * full @ self._xty + full @ self._xtx @ full
                if residual < best_residual - 1e-12:
                    best, best_residual = full, residual
        return best

    def observe_delivery(self, ms: float) -> None:
        if np.isfinite(ms) and ms >= 0:
            # NOTE: a write that waited out an outage says nothing about the next one's speed
            self.delivery_ms = (1 - SMOOTHING) * self.delivery_ms + SMOOTHING * min(
                ms, MAX_DELIVERY_MS
            )

    def compute_ms(self, items: int, units: int) -> float | None:
        """Predicted compute time of such a batch; None until enough batches are seen."""
        if self._coef is None:
            return None
        fixed, per_item, per_unit = self._coef
        return fixed + per_item * items + per_unit * units

    def predict_ms(self, items: int, units: int) -> float | None:
        """Predicted time from such a batch starting to its results written."""
        compute = self.compute_ms(items, units)
        return None if compute is None else compute + self.delivery_ms

    def to_dict(self) -> dict:
        """JSON-able, as ``/v1/tasks`` shows it."""
        coef = [None] * 3 if self._coef is None else [round(c, 6) for c in self._coef]
        return {
            "fixed_ms": coef[0],
            "per_item_ms": coef[1],
            "per_unit_ms": coef[2],
            "batches": self.batches,
            "delivery_ms": round(self.delivery_ms, 3),
            "service_ms_per_item": None
            if self.per_item_s is None
            else round(self.per_item_s * 1000, 3),
        }
