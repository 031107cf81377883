"""Telling an improper target from a proper one while the fit runs.

For a proper target F ≥ −ln Z, so the loss cannot fall for ever; for an improper one (infinite
mass) it falls as q spreads into a free direction or drifts down an unbounded slope. Every
``nfcli.train.CHECK_EVERY`` steps after annealing the loop records where q's samples lie
(``where_q_is``) and asks ``improper`` whether the record says the target has infinite mass
(README, "Robustness"): q keeps spreading or drifting while the loss keeps falling
(``spreading``), unless that is explained otherwise: in 1-D and 2-D grid quadrature measures that
p is proper (``proper_by_quadrature``); in any dimension, q travelling to a proper mode of p that
L-BFGS finds from its median (``travelling``); from 3-D on, p's mass ahead of q falling off
(``finite_ahead``): a funnel's neck, where U → −∞ and yet the mass is finite, has no proper mode
to travel to.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
from torch import Tensor

from nfcli.config import FitConfig
from nfcli.diagnostics import choose_window, quadrature
from nfcli.energy import Energy
from nfcli.mode import derivatives, proper_mode

# ``spreading``: the thresholds that call a target improper (measured: README, "Robustness").
SPREAD_SPAN, SPREAD_LOSS, SPREAD_EXTENT, SPREAD_MOVE, SPREAD_TREND = 5, 0.1, 0.1, 0.5, 0.7


def improper(checks: list[dict[str, Any]], config: FitConfig, energy: Energy, z: Tensor) -> str:
    """Why the target looks improper, for the user, given the checks so far (the last one just
    made from the batch z (R, N, D)); '' when it does not."""
    message = spreading(checks, config)
    if message and energy.dim <= 2 and proper_by_quadrature(energy, z):
        checks[-1]["proper"] = True  # q travels, or spreads into a heavy tail: p has finite mass
        message = ""
    if message:
        modes = [
            proper_mode(energy, torch.tensor(mid, dtype=torch.float64))
            for mid in checks[-1]["median"]
        ]
        if all(m is not None for m in modes):  # a proper target: q travelled, or still does
            checks[-1]["modes"] = [m.tolist() for m in modes]
            message = "" if travelling(checks[-1]) else spreading(checks, config, drift=False)
    if message and energy.dim > 2:
        before, now = checks[-1 - SPREAD_SPAN], checks[-1]
        if all(finite_ahead(energy, before, now, r) for r in range(len(now["median"]))):
            checks[-1]["finite_ahead"] = True  # a neck, a heavy tail, or the way to the mass
            message = ""
    return message


# ``finite_ahead``: how far ahead the mass is looked at, in multiples of q's last move, and by how
# much ln m must fall from its peak there for the mass ahead to be finite
AHEAD = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0)
AHEAD_FALL = 2.0


def log_mass(energy: Energy, points: Tensor, floor: float = 1e-8) -> Tensor:
    """ln m(x) = −U(x) − ½ ln det |∇²U(x)| at each of P points (P, D) → (P,): the log of the
    Laplace mass of p around x, the density times the volume over which it holds. Eigenvalues
    of ∇²U are taken in absolute value and raised to ``floor`` × the largest (a flat direction:
    a constant, large volume); −∞ where U is not finite."""
    u, _, h = derivatives(energy, points)
    ev = torch.linalg.eigvalsh(h.nan_to_num()).abs()
    ev = ev.clamp_min(floor * ev.max(-1, keepdim=True).values.clamp_min(1e-300))
    m = -u - 0.5 * ev.log().sum(-1)
    return torch.where(torch.isfinite(m), m, -math.inf)


def finite_ahead(energy: Energy, before: dict[str, Any], now: dict[str, Any], r: int) -> bool:
    """Whether p's mass is finite where restart r's q is heading, from two checks: along the
    coordinates whose median moved by over SPREAD_MOVE interquartile ranges (a drift), and both
    ways along the coordinate whose range grew most, if by over SPREAD_EXTENT (a spread), the
    Laplace mass ln m (``log_mass``) at AHEAD multiples of that move from q's median must fall by
    AHEAD_FALL nats from its peak by the farthest point. So a neck is told from infinite mass:
    down a centred hierarchy's neck (scale → 0) the density grows like τ^−(n−1) and the volume
    shrinks like τ^n, so ln m falls; along a free or flat direction it stays level, and down an
    unbounded slope it rises. A heavy tail (U ~ a ln r, a > 1) falls too; q travelling towards
    the mass from a bad start sees it rise, then fall beyond."""
    m0 = torch.tensor(before["median"][r], dtype=torch.float64)
    m1 = torch.tensor(now["median"][r], dtype=torch.float64)
    w0 = torch.tensor(before["iqr"][r], dtype=torch.float64).clamp_min(1e-30)
    w1 = torch.tensor(now["iqr"][r], dtype=torch.float64)
    move = m1 - m0
    directions = []
    drift = torch.where(move.abs() > SPREAD_MOVE * w0, move, 0.0)
    if bool(drift.any()):
        directions.append(drift)
    grew = w1 / w0
    i = int(grew.argmax())
    if float(grew[i]) > math.exp(SPREAD_EXTENT):
        spread = torch.zeros_like(m1)
        spread[i] = w1[i]
        directions += [spread, -spread]
    if not directions:
        return False
    scales = torch.tensor(AHEAD, dtype=torch.float64)
    for d in directions:
        ln_m = log_mass(energy, m1 + scales[:, None] * d)
        if not float(ln_m[-1]) < float(ln_m.max()) - AHEAD_FALL:
            return False
    return True


def proper_by_quadrature(energy: Energy, z: Tensor, tol: float = 1e-6) -> bool:
    """In 1-D and 2-D, whether p is proper can be measured rather than guessed: grid quadrature
    on a window grown from q's samples z (R, N, D) (``choose_window``) gives a finite ln Z with
    at most ``tol`` of the mass at the window's edge. An improper target keeps mass at the edge
    however far the window grows; a heavy-tailed one (an inverse gamma, whose q may spread into
    its x⁻⁴ tail while the loss falls) does not."""
    grid = choose_window(z.detach().reshape(-1, z.shape[-1]).double().cpu(), energy, tol=tol)
    return math.isfinite(grid.log_z) and grid.edge_mass <= tol


# ``mass_keeps_growing``: each axis's window is doubled GROWTH_DOUBLINGS times; the target is
# improper along it where ln Z still grows by over GROWTH_MIN nats at the last doubling and by at
# least GROWTH_KEEP of what it grew at the first (a proper p's growth shrinks geometrically: by
# 2^(1−a) per doubling where its marginal density falls like |x|^−a, a > 1; a = 1, the 1/|x| of
# U = ½ ln(1 + x²), and a flat direction, a = 0, keep it)
GROWTH_DOUBLINGS, GROWTH_MIN, GROWTH_KEEP = 3, 1e-3, 0.7
# the heaviest tail |x|^−a that the test cannot tell from infinite mass: 2^(2(1−a)) = GROWTH_KEEP
TAIL_BOUND = 1 + math.log(1 / GROWTH_KEEP) / (2 * math.log(2))


def mass_keeps_growing(energy: Energy, window: tuple[tuple[float, float], ...]) -> str:
    """In 1-D and 2-D, whether exp(−U) has infinite mass, measured: ln Z by grid quadrature as
    each axis of ``window`` is doubled about its centre (the other kept), GROWTH_DOUBLINGS times.
    Each doubling adds two slabs, each integrated on a grid of its own (so that the cells stay
    as fine as the window's: one grid over the doubled window would blur p's bulk and lose mass).
    Returns why, for the user ('' where every axis's growth dies away). Called where the
    quadrature window that q's draws chose still has mass at its edge after widening."""
    for axis, name in enumerate(energy.names):
        (a, b) = window[axis]
        mid, half = (a + b) / 2, (b - a) / 2
        log_z = [quadrature(energy, window).log_z]
        for k in range(GROWTH_DOUBLINGS):
            total = log_z[-1]
            for lo, hi in (
                (half * 2**k, half * 2 ** (k + 1)),
                (-half * 2 ** (k + 1), -half * 2**k),
            ):
                w = list(window)
                w[axis] = (mid + lo, mid + hi)
                total = float(
                    torch.logaddexp(
                        torch.tensor(total),
                        torch.tensor(quadrature(energy, tuple(w)).log_z, dtype=torch.float64),
                    )
                )
            log_z.append(total)
        if not all(math.isfinite(v) for v in log_z):
            continue
        steps = [y - x for x, y in itertools.pairwise(log_z)]
        if steps[-1] > GROWTH_MIN and steps[-1] >= GROWTH_KEEP * steps[0]:
            grew = ", ".join(f"{s:.3f}" for s in steps)
            return (
                f"exp(−U) has infinite mass along {name}: ln Z by quadrature grew by {grew} nats "
                f"as the window along {name} doubled from {2 * half:.3g} to "
                f"{2 * half * 2**GROWTH_DOUBLINGS:.3g} wide, where a proper p's growth dies away "
                f"(or its tails fall slower than |{name}|^−{TAIL_BOUND:.2f}, too heavy for any "
                "window to hold its mass). So the target is improper, and no ln Z, ELBO or KL "
                f"describes it. U must "
                f"grow in every direction faster than ln|{name}|: {name} appears in U only in a "
                "bounded or periodic term, or grows like a logarithm. Add a confining term (e.g. "
                f"+ 0.01*{name}**2) or a prior."
            )
    return ""


def travelling(check: dict[str, Any]) -> bool:
    """Whether some restart's q is still on its way to the proper mode of p found from its median
    (``check["modes"]``): farther than its interquartile range in some coordinate. Then a
    falling loss and a moving q are a journey; once q has arrived, only spreading counts
    (``spreading(drift=False)``), which an improper target with a mode (U growing too slowly
    for p to have finite mass) still shows."""
    return any(
        abs(m - c) > w
        for mode, mid, iqr in zip(check["modes"], check["median"], check["iqr"], strict=True)
        for m, c, w in zip(mode, mid, iqr, strict=True)
    )


def where_q_is(z: Tensor) -> dict[str, list]:
    """Where a batch z (R, N, D) of each restart lies, robustly: the median and the interquartile
    range of each coordinate, and ln of the largest 90% quantile of |z_d| (how far q reaches)."""
    z = z.detach().float()
    lo, mid, hi = z.quantile(torch.tensor([0.25, 0.5, 0.75], device=z.device), dim=1)
    reach = z.abs().quantile(0.9, dim=1).amax(-1).clamp(min=1e-30).log()
    return {"median": mid.tolist(), "iqr": (hi - lo).tolist(), "extent": reach.tolist()}


def spreading(checks: list[dict[str, Any]], config: FitConfig, drift: bool = True) -> str:
    """A message if q keeps spreading or drifting (``drift``: or only spreading) while the loss
    keeps falling (``spread_score`` ≥ 1), else ''."""
    if spread_score(checks, drift) < 1:
        return ""
    a, b = checks[-1 - 2 * SPREAD_SPAN], checks[-1]
    fell = min(x - y for x, y in zip(a["loss"], b["loss"], strict=True))
    grew = min(y - x for x, y in zip(a["extent"], b["extent"], strict=True))
    return (
        f"Stopped at step {b['step']} of {config.iters}: the fit keeps spreading. Over the last "
        f"{b['step'] - a['step']} steps the loss fell steadily, by {fell:.2f} nats, while q "
        f"reached {math.exp(grew):.1f}× as far, with no sign of levelling off. The target is "
        "probably improper: exp(−U) has infinite mass, or U has no lower bound, so there is "
        "nothing to converge to. Check that U grows in every direction: every variable in --vars "
        "must appear in U (x**2 with --vars x,y leaves y free), and a term such as −y or sin(x) "
        "alone does not confine its variable. Add a confining term (e.g. + 0.01*(x**2 + y**2)) "
        "or a soft box."
    )


def spread_score(checks: list[dict[str, Any]], drift: bool = True) -> float:
    """How close the last checks come to calling the target improper; ≥ 1 stops the fit. For
    every restart, over each of the last two spans of SPREAD_SPAN checks (500 steps), the loss
    must have fallen by over SPREAD_LOSS nats while q reached farther (ln extent up by over
    SPREAD_EXTENT) or moved (its median by over SPREAD_MOVE interquartile ranges in some
    coordinate); and the loss must have fallen from check to check at least SPREAD_TREND of the
    time, so that one jump (a mode found late) is no trend. The score is the smallest of these
    measures over its threshold. F ≥ −ln Z when the target is proper, so F cannot fall for
    ever; heavy tails make q reach farther without F falling (README, "Robustness"). Without
    ``drift``, a move of the median does not count (q arriving at a mode it has found)."""
    if len(checks) < 2 * SPREAD_SPAN + 1:
        return 0.0
    a, m, b = checks[-1 - 2 * SPREAD_SPAN], checks[-1 - SPREAD_SPAN], checks[-1]
    recent = checks[-1 - 2 * SPREAD_SPAN :]
    scores = []
    for r in range(len(b["loss"])):
        falls = sum(y["loss"][r] < x["loss"][r] for x, y in itertools.pairwise(recent))
        score = falls / (len(recent) - 1) / SPREAD_TREND
        for x, y in ((a, m), (m, b)):
            moved = max(
                abs(m1 - m0) / max(w, 1e-30)
                for m0, m1, w in zip(x["median"][r], y["median"][r], x["iqr"][r], strict=True)
            )
            fell, grew = x["loss"][r] - y["loss"][r], y["extent"][r] - x["extent"][r]
            moved = moved if drift else 0.0
            score = min(score, fell / SPREAD_LOSS, max(grew / SPREAD_EXTENT, moved / SPREAD_MOVE))
        scores.append(score)
    return min(scores)
