"""The training recipe: every optimisation hyperparameter, declared once.

A method's ``recipe`` attribute is a :class:`TrainingRecipe` with its defaults (the ones that
produced its benchmark row). The CLI makes one flag per field (``--lr``, ``--weight-decay``,
``--adamw-betas 0.9,0.95``, ...), the run stores the resolved recipe, the engine builds the
optimiser and the learning-rate and weight-decay schedules from it. Adding a field here is all
it takes to add an option everywhere.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from fewlabels.engine.schedule import Schedule
from fewlabels.errors import check_options
from fewlabels.options import option


@dataclass(frozen=True)
class TrainingRecipe:
    """A method's default training hyperparameters; the CLI overrides any of them."""

    optimizer: Literal["lars", "sgd", "adamw"] = option(
        "lars", "optimiser: lars (SGD with momentum and layer-wise trust ratios), sgd "
        "(Nesterov momentum) or adamw")
    learning_rate: float = option(
        0.3, "peak learning rate for a batch of 256 images (scaled linearly with the batch)",
        flag="lr")
    final_learning_rate: float = option(
        0.0, "learning rate at the end of the cosine decay, for a batch of 256 images")
    weight_decay: float = option(
        1e-6, "weight decay at the start (never on biases, norms or what the method exempts)")
    final_weight_decay: float | None = option(
        None, "weight decay at the end, reached on a cosine (DINO); none: constant")
    batch_size: int = option(512, "global batch size over all devices")
    warmup_epochs: float = option(
        1.0, "epochs of linear learning-rate warm-up before the decay")
    lr_decay: Literal["cosine", "fixmatch"] = option(
        "cosine", "the learning rate's decay after the warm-up: cosine (to "
        "--final-learning-rate) or fixmatch (lr·cos(7πt/16), Sohn et al. 2020)")
    epochs: int = option(100, "passes over the data; with --budget-minutes as well, the "
                              "schedules follow the epochs and the budget stops early")
    momentum: float = option(0.9, "momentum of sgd and lars")
    nesterov: bool = option(False, "Nesterov momentum for sgd (the papers' sgd has none)")
    adamw_betas: tuple[float, float] = option((0.9, 0.999), "AdamW's beta1,beta2")
    gradient_clip: float = option(
        0.0, "largest gradient norm, per parameter tensor as in DINO; 0: no clipping")

    def __post_init__(self) -> None:
        checks = [
            (self.optimizer in ("lars", "sgd", "adamw"),
             f"unknown optimizer {self.optimizer!r}; choose one of: lars, sgd, adamw"),
            (self.learning_rate > 0, f"--lr must be positive, got {self.learning_rate}"),
            (self.final_learning_rate >= 0, "--final-learning-rate must be at least 0"),
            (self.weight_decay >= 0, f"--weight-decay must be at least 0, got "
                                     f"{self.weight_decay}"),
            (self.final_weight_decay is None or self.final_weight_decay >= 0,
             "--final-weight-decay must be at least 0 (or none)"),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            (self.warmup_epochs >= 0, "--warmup-epochs must be at least 0"),
            (self.lr_decay in ("cosine", "fixmatch"),
             f"unknown --lr-decay {self.lr_decay!r}; choose cosine or fixmatch"),
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}"),
            (0 <= self.momentum < 1, f"--momentum must be in [0, 1), got {self.momentum}"),
            (all(0 <= b < 1 for b in self.adamw_betas),
             f"--adamw-betas must be two numbers in [0, 1), got {self.adamw_betas}"),
            (self.gradient_clip >= 0, "--gradient-clip must be at least 0 (0: off)"),
        ]
        check_options(checks)

    def learning_rate_schedule(self) -> Schedule:
        """Warm-up then the decay (cosine or FixMatch's), scaled by ``batch_size / 256``
        (Goyal et al. 2017)."""
        scale = self.batch_size / 256
        if self.lr_decay == "fixmatch":
            return Schedule(self.learning_rate * scale, None, "fixmatch", self.warmup_epochs)
        return Schedule.warmup_cosine(self.learning_rate * scale,
                                      self.final_learning_rate * scale, self.warmup_epochs)

    def weight_decay_schedule(self) -> Schedule:
        if self.final_weight_decay is None:
            return Schedule(self.weight_decay)
        return Schedule(self.weight_decay, self.final_weight_decay, "cosine")

    def replace(self, **changes: Any) -> TrainingRecipe:
        """A copy with ``changes``; ``None`` values keep the current value."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["adamw_betas"] = list(self.adamw_betas)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainingRecipe:
        known = {field.name for field in dataclasses.fields(cls)}
        values = {k: v for k, v in values.items() if k in known}
        if "adamw_betas" in values:
            values["adamw_betas"] = tuple(values["adamw_betas"])
        return cls(**values)
