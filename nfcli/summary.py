"""A per-variable summary of draws, in the manner of ArviZ's ``summary``: mean, sd, the Monte-Carlo
standard error of the mean and the 5/25/50/75/95% quantiles, for plain draws of q or for draws of
q importance-weighted towards p (then with the effective sample size).

With self-normalised weights w̃_i = w_i / Σ_j w_j (w_i = p̃(z_i)/q(z_i); w̃_i = 1/N for plain
draws) every statistic below is one formula for both cases:

    mean        μ = Σ w̃_i x_i
    sd          s² = Σ w̃_i (x_i − μ)² / (1 − Σ w̃_i²)        (N/(N−1) correction when w̃ = 1/N)
    mcse_mean   m² = Σ w̃_i² (x_i − μ)² / (1 − Σ w̃_i²)       (delta method; s²/N when w̃ = 1/N)
    ess_mean    s² / m² = Σ w̃_i (x_i − μ)² / Σ w̃_i² (x_i − μ)², so mcse_mean = sd / √ess_mean,
                at most N (then m² = s²/N): where the weights are smallest far from the mean the
                ratio can exceed N, a precision that N draws of p itself would not have and that
                the delta method's noise, not the weights, gives (100,441 of 100,000 was seen)
    ESS (Kish)  1 / Σ w̃_i² = (Σ w)² / Σ w²                    (N when w̃ = 1/N)

m² is the delta-method variance of the self-normalised importance-sampling estimate of the mean
(Owen 2013, "Monte Carlo theory, methods and examples", ch. 9); unlike sd/√ESS_Kish it sees how
the weights line up with x (for N(0,1) draws weighted towards N(1,1) it is √2 times larger).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from rich import box
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.table import Table
from torch import Tensor

from nfcli.diagnostics import draw_weighted, khat_verdict, pareto_khat
from nfcli.energy import Energy
from nfcli.errors import NfcliError
from nfcli.flows import Flow

PROBS = (0.05, 0.25, 0.50, 0.75, 0.95)
FORMATS = ("table", "csv", "json")
OF_Q = "q, the fitted flow"
OF_P = "p, from draws of q weighted by p̃/q"


@dataclass(frozen=True)
class VariableSummary:
    """One variable's statistics (formulas in the module docstring)."""

    name: str
    mean: float
    sd: float
    mcse_mean: float
    ess_mean: float
    q05: float
    q25: float
    q50: float
    q75: float
    q95: float


@dataclass(frozen=True)
class Summary:
    """The per-variable summary of ``draws`` draws of ``of``; ``ess`` is Kish's (= draws when
    unweighted), ``khat`` PSIS's Pareto k̂ of the weights (None when unweighted), ``dropped`` the
    draws left out because a value or a log weight was NaN or ±∞ (a weight of exp(−∞) = 0
    is kept: it adds nothing)."""

    of: str
    draws: int
    weighted: bool
    ess: float
    khat: float | None
    dropped: int
    variables: list[VariableSummary] = field(default_factory=list)


def weighted_quantiles(x: Tensor, w: Tensor, probs: Sequence[float]) -> Tensor:
    """Quantiles of x (N,) under self-normalised weights w (N,), w ≥ 0, Σ w = 1 (float64).

    Sort x; the i-th sorted draw sits at c_i = Σ_{j<i} w_j + w_i/2, the midpoint of its step in
    the weighted empirical CDF; Q(p) interpolates linearly between the points (c_i, x_(i)) and is
    x_(1) below c_1 and x_(N) above c_N. With equal weights c_i = (i − ½)/N: Hazen's rule
    (Hyndman & Fan 1996, definition 5). Draws of weight 0 are left out. Returns (len(probs),)."""
    keep = w > 0
    x, w = x[keep], w[keep]
    order = torch.argsort(x)
    xs, ws = x[order], w[order]
    c = torch.cumsum(ws, 0) - ws / 2
    p = torch.tensor(probs, dtype=c.dtype)
    hi = torch.searchsorted(c, p).clamp(max=len(c) - 1)  # first c_i ≥ p
    lo = (hi - 1).clamp(min=0)
    gap = c[hi] - c[lo]
    t = torch.where(gap > 0, (p - c[lo]) / torch.where(gap > 0, gap, 1.0), 0.0).clamp(0, 1)
    return xs[lo] + t * (xs[hi] - xs[lo])


def summarise(
    samples: Tensor, names: Sequence[str], log_w: Tensor | None = None, of: str = OF_Q
) -> Summary:
    """The summary of draws ``samples`` (N, D) of variables ``names`` (D), each draw weighted by
    exp(log_w) (N,) when given (self-normalised: only ratios matter), equally otherwise."""
    if samples.ndim != 2 or samples.shape[1] != len(names):
        raise ValueError(f"samples {tuple(samples.shape)} do not match {len(names)} names")
    x = samples.detach().double().cpu()
    lw = torch.zeros(len(x), dtype=torch.float64) if log_w is None else log_w.double().cpu()
    if lw.shape != (len(x),):
        raise ValueError(f"log_w {tuple(lw.shape)} does not match {len(x)} samples")
    ok = torch.isfinite(x).all(1) & ~torch.isnan(lw) & (lw < math.inf)
    x, lw = x[ok], lw[ok]
    if len(x) == 0 or not torch.isfinite(lw).any():
        raise NfcliError(
            f"Cannot summarise: none of the {len(ok):,} draws has a finite value"
            + (" and a finite importance weight (U is infinite or NaN where q puts its mass)")
            * (log_w is not None)
            + ". Check the fit with nfcli report and nfcli plot, or refit."
        )
    w = torch.softmax(lw, 0)  # w̃_i = w_i / Σ w
    sum_w2 = float((w * w).sum())
    correction = 1 - sum_w2  # 0 when one draw holds all the weight: sd and mcse are then NaN
    variables = []
    for j, name in enumerate(names):
        xj = x[:, j]
        mean = float((w * xj).sum())
        dev2 = (xj - mean) ** 2
        var = float((w * dev2).sum()) / correction if correction > 0 else math.nan
        mcse2 = float((w * w * dev2).sum()) / correction if correction > 0 else math.nan
        ess_mean = var / mcse2 if mcse2 > 0 else (1 / sum_w2 if var == 0 else math.nan)
        if ess_mean > len(x):  # no better than N draws of p itself (module docstring)
            ess_mean, mcse2 = float(len(x)), var / len(x)
        q = weighted_quantiles(xj, w, PROBS).tolist()
        variables.append(
            VariableSummary(name, mean, math.sqrt(var), math.sqrt(mcse2), ess_mean, *q)
        )
    khat = pareto_khat(lw) if log_w is not None else None
    return Summary(of, len(x), log_w is not None, 1 / sum_w2, khat, int((~ok).sum()), variables)


@torch.no_grad()
def summarise_flow(
    flow: Flow,
    names: Sequence[str],
    n: int,
    generator: torch.Generator | None = None,
    energy: Energy | None = None,
) -> Summary:
    """The summary of n fresh draws of the flow q; with ``energy``, of the same draws weighted by
    w = p̃/q = exp(−U − ln q), which estimates p's statistics (the limit of resampling them)."""
    if energy is None:
        return summarise(flow.sample(n, generator), names, of=OF_Q)
    z, log_w = draw_weighted(flow, energy, n, generator)
    return summarise(z, names, log_w, of=OF_P)


def check_summary_options(n: int, fmt: str) -> None:
    """Refuse a non-positive number of draws or an unknown output format."""
    if n <= 0:
        raise NfcliError(f"-n {n}: the number of draws must be positive, e.g. -n 100000.")
    if fmt not in FORMATS:
        raise NfcliError(
            f"--format {fmt}: not a summary format; choose one of {', '.join(FORMATS)} "
            "(csv and json go to stdout for scripts)."
        )


def decimals(mcse: float) -> int:
    """Decimal places the Monte-Carlo error supports: the first place at which the MCSE is
    nonzero, d = ⌈−log10(mcse)⌉ clamped to 0…6 (mcse 0.0015 → 3: −1.791); 4 if mcse is 0 or NaN."""
    if not (math.isfinite(mcse) and mcse > 0):
        return 4
    return min(6, max(0, math.ceil(-math.log10(mcse))))


STATS = ("mean", "sd", "mcse_mean")
QUANTILES = tuple(f"{round(p * 100)}%" for p in PROBS)


def variables_table(s: Summary) -> VariablesTable:
    """The summary as a rich renderable: one row per variable, its mean, sd and quantiles to the
    decimal places its MCSE supports; the ESS column only for weighted draws (for plain i.i.d.
    draws it is the number of draws). One table where the terminal is wide enough, else two
    (the statistics, then the quantiles): a narrow terminal never cuts a number."""
    return VariablesTable(s)


class VariablesTable:
    """``variables_table``'s renderable: the one table, or two where it does not fit."""

    def __init__(self, s: Summary) -> None:
        self.summary = s

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        s = self.summary
        ess = ("ess_mean",) if s.weighted else ()
        whole = _table(s, (*STATS, *QUANTILES, *ess))
        natural = Measurement.get(console, options.update(max_width=10**6), whole).maximum
        if natural <= options.max_width:
            yield whole
            return
        yield _table(s, (*STATS, *ess), caption=False)
        yield _table(s, QUANTILES, title=False)


def _table(s: Summary, columns: Sequence[str], title: bool = True, caption: bool = True) -> Table:
    """The summary's table with these ``columns`` (of STATS, QUANTILES and ess_mean)."""
    notes = []
    if s.weighted:
        k = s.khat if s.khat is not None else math.nan
        notes.append(
            f"ESS (Kish) {s.ess:,.0f} of {s.draws:,}; Pareto k̂ {k:.2f} ({khat_verdict(k)})"
        )
    if s.dropped:
        notes.append(f"{s.dropped:,} draws with a non-finite value or weight left out")
    t = Table(
        title=f"per-variable summary of {s.of} ({s.draws:,} draws)" if title else None,
        caption=("; ".join(notes) or None) if caption else None,
        title_justify="left",
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    t.add_column("variable", style="bold", no_wrap=True)
    for c in columns:
        t.add_column(c, justify="right", no_wrap=True)
    for v in s.variables:
        d = decimals(v.mcse_mean)
        cell = {
            "mean": f"{v.mean:.{d}f}",
            "sd": f"{v.sd:.{d}f}",
            "mcse_mean": f"{v.mcse_mean:.2g}",
            "ess_mean": f"{v.ess_mean:,.0f}",
        }
        cell.update(
            (name, f"{x:.{d}f}")
            for name, x in zip(QUANTILES, (v.q05, v.q25, v.q50, v.q75, v.q95), strict=True)
        )
        t.add_row(v.name, *(cell[c] for c in columns))
    return t


def flow_summary_table(
    flow: Flow, names: Sequence[str], n: int = 20_000, seed: int = 0
) -> VariablesTable:
    """The table of ``summarise_flow`` for n seeded draws of q on the CPU (fast: report, fit)."""
    return variables_table(summarise_flow(flow, names, n, torch.Generator().manual_seed(seed)))


def to_csv(s: Summary) -> str:
    """One header line (the VariableSummary fields) and one line per variable, full precision."""
    buf = io.StringIO()
    rows = [asdict(v) for v in s.variables]
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def to_json(s: Summary) -> str:
    """The whole Summary as JSON (NaN and ±∞ written as null)."""

    def clean(o: object) -> object:
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, list):
            return [clean(v) for v in o]
        return o

    return json.dumps(clean(asdict(s)), indent=2) + "\n"
