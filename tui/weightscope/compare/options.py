"""How pairs are compared: the options a job carries (light: the app's first screen imports it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ScanOptions:
    """How pairs are compared.

    Attributes:
        atol, rtol: the tolerance of the `close` verdict; None for the dtype defaults.
        device: "cpu" (compiled kernels) or a torch device such as "cuda".
        histograms: also compute histograms (a second pass over each tensor).
    """

    atol: float | None = None
    rtol: float | None = None
    device: str = "cpu"
    histograms: bool = False
