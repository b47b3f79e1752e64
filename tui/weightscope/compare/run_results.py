"""What a run's scan found, as columns: per tensor and checkpoint, sums; per tensor and step,
a status and the figures made from the sums.

Figures are NaN here where undefined (‖R‖ = 0 for drift, a side all zeros for the cosine, no
comparable predecessor for the update, a tensor absent or in another shape); every report
writes them as null or n/a, never NaN.
"""

from __future__ import annotations

import numpy as np

from weightscope.compare import pieces
from weightscope.compare.run_columns import (
    ABSMAX, CHANGED, DD, ERROR, IDENTICAL, NONFINITE, PENDING, PP, READ, RR, RS, SAME_PREV, SAME_REF, SQ, SS, SUMS,
    UU, VALUE_EQUAL)
from weightscope.compare.run_plan import RunCatalog


def ratio(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """√(top / bottom), NaN where bottom is not positive."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(bottom > 0, np.sqrt(np.maximum(top, 0) / bottom), np.nan)


def cosine_of(rs: np.ndarray, rr: np.ndarray, ss: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((rr > 0) & (ss > 0), np.clip(rs / np.sqrt(rr * ss), -1.0, 1.0), np.nan)


class RunTable:
    """Every tensor of a run at every step, as arrays ([tensor, checkpoint] or [tensor, step]).

    Attributes:
        sums: [tensor, checkpoint, `run_columns.SUMS`]: the reference's own sums in column 0.
        same: [tensor, checkpoint]: `READ`, `SAME_REF`, `SAME_PREV` bits.
        status: [tensor, step]: `run_columns.STATUSES` codes (PENDING until read).
        errors: (tensor, step) -> why it could not be read.
    """

    def __init__(self, catalog: RunCatalog):
        n, count = len(catalog), len(catalog.points)
        self.sums = np.zeros((n, count, SUMS))
        self.same = np.zeros((n, count), np.uint8)
        self.status = np.ascontiguousarray(catalog.known.T)
        self.errors = {(i, k): why for (k, i), why in catalog.errors.items() if k > 0}
        self.gaps = catalog.gaps()
        self.numel = catalog.numel
        self.comparable = catalog.comparable.T  # [tensor, checkpoint]
        codes = np.where(catalog.comparable, catalog.code, 0)
        self.decoded = (codes < pieces.NARROW).all(axis=0)

    def __len__(self) -> int:
        return len(self.status)

    @property
    def steps(self) -> int:
        return self.status.shape[1]

    def add(self, rows: np.ndarray, sums: np.ndarray, same: np.ndarray, status: np.ndarray) -> None:
        """Results of these tensors from elsewhere (the engine's, sent to a client)."""
        self.sums[rows], self.same[rows], self.status[rows] = sums, same, status

    def finish(self, rows: np.ndarray, steps, reference_nonfinite: np.ndarray | None = None) -> None:
        """The statuses of these tensors at these steps (run indices), once their sums are in;
        `reference_nonfinite`: the reference's NaN/Inf per tensor, where its sums are not in this table."""
        before = self.sums[:, 0, NONFINITE] if reference_nonfinite is None else reference_nonfinite
        for t in np.asarray(steps, np.int64).tolist():
            pending = rows[self.status[rows, t - 1] == PENDING]
            same = self.same[pending, t]
            sums = self.sums[pending, t]
            equal = (sums[:, DD] == 0) & (sums[:, NONFINITE] == before[pending]) & self.decoded[pending]
            status = np.where(same & SAME_REF, IDENTICAL, np.where(equal, VALUE_EQUAL, CHANGED))
            self.status[pending, t - 1] = np.where(same & READ, status, ERROR)

    def fail(self, i: int, steps, why: str) -> None:
        for t in np.asarray(steps, np.int64).tolist():
            if self.comparable[i, t]:
                self.status[i, t - 1] = ERROR
                self.errors[(i, t)] = why

    # Figures, [tensor, step], NaN where undefined

    def _read(self) -> np.ndarray:
        """Where a step's values were summed: read, decoded, not in error."""
        return ((self.same[:, 1:] & READ) != 0) & self.decoded[:, None] & (self.status != ERROR)

    def _vs_reference(self) -> np.ndarray:
        return self._read() & self.comparable[:, :1]

    def _vs_predecessor(self) -> np.ndarray:
        return self._read() & self.comparable[:, :-1]

    def drift(self) -> np.ndarray:
        """‖S_t − R‖ / ‖R‖ over positions finite in both."""
        s = self.sums[:, 1:]
        return np.where(self._vs_reference(), ratio(s[..., DD], s[..., RR]), np.nan)

    def cosine(self) -> np.ndarray:
        s = self.sums[:, 1:]
        return np.where(self._vs_reference(), cosine_of(s[..., RS], s[..., RR], s[..., SS]), np.nan)

    def update(self) -> np.ndarray:
        """‖S_t − S_{t−1}‖ / ‖S_{t−1}‖ over positions finite in both."""
        s = self.sums[:, 1:]
        return np.where(self._vs_predecessor(), ratio(s[..., UU], s[..., PP]), np.nan)

    def update_per_step(self) -> np.ndarray:
        """The update divided by the steps between the checkpoints (NaN where unknown)."""
        return self.update() / self.gaps[None, :]

    def own(self, column: int) -> np.ndarray:
        """A step's own figure where it has finite values (absmax; norm for SQ), else NaN."""
        read = self._read()
        finite = self.sums[:, 1:, NONFINITE] < self.numel[:, None]
        value = np.sqrt(self.sums[:, 1:, SQ]) if column == SQ else self.sums[:, 1:, column]
        return np.where(read & finite, value, np.nan)

    def absmax(self) -> np.ndarray:
        return self.own(ABSMAX)

    def norm(self) -> np.ndarray:
        return self.own(SQ)

    def nonfinite(self) -> np.ndarray:
        """NaN and ±Inf counted per step (0 where not read)."""
        return np.where(self._read(), self.sums[:, 1:, NONFINITE], 0).astype(np.int64)

    def reference(self, column: int) -> np.ndarray:
        """The reference's own figure (absmax, norm for SQ, nonfinite), NaN where not read."""
        read = (self.same[:, 0] & READ) != 0
        value = np.sqrt(self.sums[:, 0, SQ]) if column == SQ else self.sums[:, 0, column]
        return np.where(read & self.decoded, value, np.nan)

    def sums_of(self, column: int, where: np.ndarray) -> np.ndarray:
        """A step sum, 0 where `where` is false (for roll-ups)."""
        return np.where(where, self.sums[:, 1:, column], 0.0)

    def rollup_columns(self) -> dict[str, np.ndarray]:
        """The sums groups add up, [tensor, step], zero where a tensor's figure is undefined."""
        ref, pred = self._vs_reference(), self._vs_predecessor()
        return {"dd": self.sums_of(DD, ref), "rr": self.sums_of(RR, ref), "rs": self.sums_of(RS, ref),
                "ss": self.sums_of(SS, ref), "uu": self.sums_of(UU, pred), "pp": self.sums_of(PP, pred)}

    def same_as_predecessor(self) -> np.ndarray:
        """[tensor, step]: bytes equal to the predecessor's."""
        return (self.same[:, 1:] & SAME_PREV) != 0

    def same_as_reference(self) -> np.ndarray:
        return (self.same[:, 1:] & SAME_REF) != 0
