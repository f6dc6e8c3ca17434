"""The collapse monitor: a run whose representation has collapsed stops with a clear message.

Self-distillation and redundancy-reduction methods can learn the trivial solution of mapping
every image to the same point (BYOL and DINO on small data or other backbones; SimSiam
without its stop-gradient). A method reports ``embedding_spread`` (see
:func:`fewlabels.methods.base.embedding_spread`: about 1 when its embeddings are spread over
the sphere, 0 when collapsed) in its losses; the engine logs it and hands it to this monitor
at every log step, averaged over devices so every device decides alike.
"""

from __future__ import annotations

from dataclasses import dataclass

# Below this spread the embeddings of a batch are nearly one point: a healthy run of every
# method in docs/benchmarks.md stays far above it, the collapsed DINO ablations fall below.
COLLAPSE_SPREAD = 0.05


@dataclass
class CollapseMonitor:
    """Stops a run whose ``embedding_spread`` stayed below ``threshold`` for ``patience``
    consecutive checks after the warm-up (a short dip while a run finds its feet is normal).
    """

    threshold: float = COLLAPSE_SPREAD
    patience: int = 10
    low_checks: int = 0

    def collapsed(self, spread: float, past_warmup: bool) -> bool:
        """Record one check; True when the run should stop."""
        if not past_warmup or spread >= self.threshold:
            self.low_checks = 0
            return False
        self.low_checks += 1
        return self.low_checks >= self.patience

    @staticmethod
    def message(method: str, spread: float, step: int, hint: str) -> str:
        return (f"{method} collapsed at step {step}: its embeddings of different images are "
                f"nearly identical (spread {spread:.3f}, where 1 is spread over the sphere "
                f"and 0 is one point); {hint}")
