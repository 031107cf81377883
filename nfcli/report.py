"""The trust report of a fit: what metrics.json holds, and the checkpoint's ``"metrics"``.

``TrustReport`` is built by ``nfcli.run.evaluate`` (the numbers from q's draws) and
``nfcli.run.run_fit`` (the fit's settings and outcome, the restarts, the verdict), and read by
``nfcli.diagnostics.verdict``, the CLI's summary table, ``nfcli.compare`` and ``nfcli.figures``.

``to_dict`` gives metrics.json's dict: its keys in their order, each key written exactly when
nfcli has always written it (``khat_note`` only with a note, the quadrature keys only in 1-D and
2-D, ``mode_search`` only from 3-D on, the restart keys only with restarts, …). ``from_dict``
reads the dict of any nfcli version: a key that an older version did not write is None here (or
empty) and stays unwritten by ``to_dict`` (``absent``); a key this version does not know is kept
in ``extra`` and written back at the end. So ``to_dict(from_dict(d)) == d`` for every such
``d``, with the same key order for today's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from nfcli.lost_modes import ModeSearch
from nfcli.train import COUNTS


@dataclass
class Quadrature:
    """1-D and 2-D only: ln Z by grid quadrature over ``window`` and what it gives,
    KL(q‖p) = ln Z − ELBO (± the ELBO's standard error), KL(p‖q) and the total variation. Where
    quadrature failed (ln Z not finite) the numbers are None and ``note`` says why;
    ``edge_mass`` (the target's mass on the window's edge) is there only where it did not."""

    log_z: float | None = None
    kl_qp: float | None = None
    kl_qp_se: float | None = None
    kl_pq: float | None = None
    tv: float | None = None
    window: list[list[float]] | None = None  # [[x0, x1]] or [[x0, x1], [y0, y1]]
    edge_mass: float | None = None
    note: str | None = None


@dataclass
class TrustReport:
    """A fit's settings, outcome and diagnostics, field by field as in metrics.json (same names).

    None means not known: not computed for this fit (``khat_note`` without a note, ``tail_exponent``
    unless the large weights sit in q's tails, ``quadrature`` unless D ≤ 2, ``mode_search``
    unless D ≥ 3, ``restarts`` without --restarts), not written by the nfcli version that made
    the report, or, for the fit's fields, a report from ``evaluate`` alone. ``*_replicates`` hold
    one value per independent set of draws; ``khat``, ``ess_fraction``, ``log_z_is`` and
    ``elbo`` are the first set's."""

    # the fit: what was asked and how it went (run_fit)
    target: str | None = None
    dim: int | None = None
    vars: list[str] | None = None
    K: int | None = None
    flow: str | None = None
    restarts_fitted: int | None = None
    device: str | None = None
    threads: int | None = None  # CPU threads used
    dtype: str | None = None
    iters: int | None = None
    anneal: int | None = None  # annealing steps (resolved)
    steps_done: int | None = None
    stopped: str | None = None  # None: every step ran; "interrupted", "nonfinite", "improper"
    stop_message: str | None = None  # why it stopped ("" when it did not)
    counts: dict[str, int] = field(default_factory=dict)  # nfcli.train.COUNTS: events in the fit
    start: str | None = None  # "origin" or "mode" (FitConfig.start, resolved)
    start_source: str | None = None  # with "mode": the Gaussian chosen (nfcli.mode.GaussianStart)
    start_elbo: float | None = None  # that Gaussian's ELBO
    converged_step: int | None = None  # where the loss levelled off (FitConfig.converge)
    final_loss: float | None = None  # mean F_β over the last 1% of steps
    final_loss_beta1: float | None = None  # the same at β = 1: the negative ELBO
    wall_time_s: float | None = None
    iters_per_s: float | None = None
    energy_share: float | None = None  # of the optimisation's time, in U and ∇U (CPU fits only)
    energy_compiled: str | None = None  # how U was compiled for the fit, or why that failed
    flow_compiled: str | None = None  # how the flow's step was compiled, or why that failed
    # importance sampling with q's draws (evaluate)
    elbo: float | None = None
    elbo_se: float | None = None
    log_z_is: float | None = None
    log_z_is_se: float | None = None
    ess_fraction: float | None = None  # Kish ESS / draws
    khat: float | None = None  # PSIS Pareto k̂
    khat_verdict: str | None = None  # "good", "usable", "do not trust"
    monte_carlo_samples: int | None = None  # draws per set
    nonfinite_samples: int | None = None
    replicate_sets: int | None = None
    khat_replicates: list[float] | None = None
    ess_fraction_replicates: list[float] | None = None
    log_z_is_replicates: list[float] | None = None
    khat_note: str | None = None  # why k̂ is not available in some set
    khat_cause: str | None = None  # "tails" or "mode": where the largest weights sit
    large_weights_edge_share: float | None = None  # with khat_cause
    tail_exponent: float | None = None  # U ~ r^a far out; with khat_cause "tails"
    log_z_reference: float | None = None  # a built-in target's exact ln Z
    # where q has draws at which U is not finite (p = 0 there): the ELBO is −∞ and KL(q‖p) ∞;
    # this is mean ln w over the other draws (q restricted to p's support; written only then)
    elbo_inside: float | None = None
    # 1-D and 2-D: why the target is improper, measured after the fit by quadrature's mass
    # growing with its window (nfcli.improper.mass_keeps_growing); written only then
    improper: str | None = None
    quadrature: Quadrature | None = None  # D ≤ 2 only
    mode_search: ModeSearch | None = None  # D ≥ 3 only: nfcli.lost_modes.search_modes
    warnings: list[str] = field(default_factory=list)
    # restarts (run_fit, with --restarts > 1): nfcli.train.choose_restart's summaries
    restarts: list[dict[str, float]] | None = None
    restart_kept: int | None = None
    restarts_log_z_spread: float | None = None  # max − min of the reliable ln Z estimates
    restarts_log_z_noise: float | None = None  # the spread that noise alone would explain
    # nfcli.diagnostics.verdict of all the above
    verdict: str | None = None  # "good", "usable", "do not trust"
    verdict_reasons: list[str] = field(default_factory=list)
    # the draws the fit wrote (nfcli.mcmc.chains.draws_sampler): "q", "neutra" or
    # "independence", why, and for MCMC its chains' summary (nfcli.mcmc.chains.chains_summary);
    # None before issue 27
    sampler: str | None = None
    sampler_reason: str | None = None
    chains: dict[str, Any] | None = None
    # round trips (from_dict): the keys this nfcli does not know, with their values; and the keys
    # it writes whatever their value that the dict lacked (an older nfcli's), which to_dict skips
    extra: dict[str, Any] = field(default_factory=dict)
    absent: frozenset[str] = frozenset()

    @property
    def kl_qp(self) -> float | None:
        """KL(q‖p) in nats where quadrature gave ln Z (D ≤ 2), else None."""
        return self.quadrature.kl_qp if self.quadrature is not None else None

    @property
    def outside_share(self) -> float:
        """The share of q's draws (the first set) where U or ln q is not finite: q's mass where p
        has none (0 where not known)."""
        n, bad = self.monte_carlo_samples, self.nonfinite_samples
        return bad / n if n and bad else 0.0

    @property
    def kl_qp_inside(self) -> float | None:
        """Where q has mass outside p's support (``outside_share`` > 0, so KL(q‖p) = ∞): KL from
        q restricted to the support and renormalised, q_in = q / (1 − f), to p, by quadrature's
        ln Z: ln Z − E_q_in[ln w] − ln(1 − f). None elsewhere or without quadrature."""
        f, q = self.outside_share, self.quadrature
        if not f or f >= 1 or self.elbo_inside is None or q is None or q.log_z is None:
            return None
        return q.log_z - self.elbo_inside - math.log1p(-f)

    def to_dict(self) -> dict[str, Any]:
        """metrics.json's dict: every key in its place, the conditional ones only when set."""
        d: dict[str, Any] = {}

        def put(key: str, value: Any, always: bool = True) -> None:
            if key not in self.absent and (always or value is not None):
                d[key] = value

        for key in _FIT_KEYS:
            put(key, getattr(self, key))
        for key in _START_KEYS:
            put(key, getattr(self, key), always=False)
        d.update(self.counts)
        for key in _LOSS_KEYS:
            put(key, getattr(self, key))
        put("energy_share", self.energy_share, always=False)
        put("energy_compiled", self.energy_compiled, always=False)
        put("flow_compiled", self.flow_compiled, always=False)
        for key in _IS_KEYS:
            put(key, getattr(self, key))
        for key in _IS_OPTIONAL_KEYS:
            put(key, getattr(self, key), always=False)
        q = self.quadrature
        if q is not None:
            for key, value in zip(_QUADRATURE_KEYS, _quadrature_values(q), strict=True):
                put(key, value)
            put("quadrature_edge_mass", q.edge_mass, always=False)
            put("quadrature_note", q.note, always=False)
        if self.mode_search is not None:
            put("mode_search", self.mode_search.to_dict())
        put("warnings", self.warnings)
        for key in _RESTART_KEYS:
            put(key, getattr(self, key), always=False)
        put("verdict", self.verdict)
        put("verdict_reasons", self.verdict_reasons)
        for key in _SAMPLER_KEYS:
            put(key, getattr(self, key), always=False)
        d.update(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrustReport:
        """The report in a metrics dict of any nfcli version (see the module's docstring)."""
        rest = dict(d)  # what is left once every known key is taken
        missing: set[str] = set()

        def take(key: str, default: Any = None, always: bool = True) -> Any:
            if key not in rest:
                if always:  # a key written whatever its value: this dict predates it
                    missing.add(key)
                return default
            return rest.pop(key)

        values = {key: take(key) for key in _FIT_KEYS}
        values.update({key: take(key, always=False) for key in _START_KEYS})
        values["counts"] = {k: rest.pop(k) for k in list(rest) if k in COUNTS}
        for key in _LOSS_KEYS + _IS_KEYS:
            values[key] = take(key)
        values["energy_share"] = take("energy_share", always=False)
        values["energy_compiled"] = take("energy_compiled", always=False)
        values["flow_compiled"] = take("flow_compiled", always=False)
        for key in _IS_OPTIONAL_KEYS + _RESTART_KEYS:
            values[key] = take(key, always=False)
        if any(k in rest for k in (*_QUADRATURE_KEYS, "quadrature_edge_mass", "quadrature_note")):
            log_z, kl_qp, kl_qp_se, kl_pq, tv, window = (take(k) for k in _QUADRATURE_KEYS)
            edge_mass = take("quadrature_edge_mass", always=False)
            note = take("quadrature_note", always=False)
            values["quadrature"] = Quadrature(
                log_z, kl_qp, kl_qp_se, kl_pq, tv, window, edge_mass, note
            )
        search = take("mode_search", always=False)
        values["mode_search"] = ModeSearch.from_dict(search) if search is not None else None
        for key in ("warnings", "verdict_reasons"):
            values[key] = take(key, [])
        values["verdict"] = take("verdict")
        for key in _SAMPLER_KEYS:
            values[key] = take(key, always=False)
        return cls(**values, extra=rest, absent=frozenset(missing))


# metrics.json's keys, in order, by the field they come from (``counts`` and ``quadrature`` apart)
_FIT_KEYS = (
    "target", "dim", "vars", "K", "flow", "restarts_fitted", "device", "threads", "dtype", "iters",
    "anneal", "steps_done", "stopped", "stop_message",
)  # fmt: skip
_START_KEYS = ("start", "start_source", "start_elbo", "converged_step")
_LOSS_KEYS = ("final_loss", "final_loss_beta1", "wall_time_s", "iters_per_s")
_IS_KEYS = (
    "elbo", "elbo_se", "log_z_is", "log_z_is_se", "ess_fraction", "khat", "khat_verdict",
    "monte_carlo_samples", "nonfinite_samples", "replicate_sets", "khat_replicates",
    "ess_fraction_replicates", "log_z_is_replicates",
)  # fmt: skip
_IS_OPTIONAL_KEYS = (
    "khat_note", "khat_cause", "large_weights_edge_share", "tail_exponent", "log_z_reference",
    "elbo_inside", "improper",
)  # fmt: skip
_QUADRATURE_KEYS = ("log_z_quadrature", "kl_qp", "kl_qp_se", "kl_pq", "tv", "quadrature_window")
_RESTART_KEYS = ("restarts", "restart_kept", "restarts_log_z_spread", "restarts_log_z_noise")
_SAMPLER_KEYS = ("sampler", "sampler_reason", "chains")


def _quadrature_values(q: Quadrature) -> tuple[Any, ...]:
    """``q``'s values for _QUADRATURE_KEYS, in that order."""
    return (q.log_z, q.kl_qp, q.kl_qp_se, q.kl_pq, q.tv, q.window)
