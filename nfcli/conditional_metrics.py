"""What a conditional fit reports: its settings and outcome, and the trust numbers per condition
on a grid (``nfcli.conditional_report``), with their mean and worst. It is metrics.json's dict of
a conditional fit and the conditional checkpoint's ``"metrics"``; plain values only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from nfcli.conditional_report import ConditionalSummary, ConditionPoint
from nfcli.conditions import Condition


@dataclass
class ConditionalReport:
    """A conditional fit's settings, outcome and per-condition diagnostics.

    ``conditions``: the trained ranges; ``points``: the diagnostics at each condition of the
    grid the report was made on (``draws`` draws of q(·|c) each); ``summary``: their mean and
    worst (``nfcli.conditional_report.summarise``)."""

    target: str
    dim: int
    vars: list[str]
    conditions: list[Condition]
    flow: str
    K: int
    iters: int
    steps_done: int
    per_step: int
    stopped: str | None
    wall_time_s: float
    final_loss: float
    final_loss_beta1: float
    draws: int
    points: list[ConditionPoint] = field(default_factory=list)
    summary: ConditionalSummary | None = None
    warnings: list[str] = field(default_factory=list)
    # --restarts R: each restart's mean ELBO over the conditions at the end of annealing, and
    # the one kept (its seed: the fit's seed + restart_kept); None for a single fit
    restarts: list[float] | None = None
    restart_kept: int | None = None
    # the worst condition's verdict, named (``conditional_verdict``); None before issue 28
    verdict: str | None = None
    verdict_reasons: list[str] = field(default_factory=list)

    @property
    def condition_names(self) -> list[str]:
        return [c.name for c in self.conditions]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind"] = "conditional"
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConditionalReport:
        values = {k: v for k, v in d.items() if k != "kind"}
        values["conditions"] = [Condition(**c) for c in d["conditions"]]
        values["points"] = [ConditionPoint(**p) for p in d.get("points", [])]
        summary = d.get("summary")
        values["summary"] = ConditionalSummary(**summary) if summary is not None else None
        return cls(**values)
