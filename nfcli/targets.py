"""Built-in target energies: the paper's U1–U4 and two common 2-D test densities.

Each is an expression string in z1, z2, compiled by the same parser as the user's, so that what
``nfcli targets`` prints is exactly what is fitted. ``log_z`` is the reference ln Z: closed form
where one exists, otherwise grid quadrature (``benchmarks/reference_logz.py`` recomputes them and
``tests/test_quadrature.py`` checks them).

U2–U4 have infinite mass along z1 (their density does not decay in z1), so reverse KL would drift
without end. We multiply them by a soft box, σ(10·(5 − ‖z‖∞)), i.e. add −ln σ(10·(5 − max|z_i|)) to
the energy: inside the paper's plotting window (−4, 4)² it changes U by less than 1e-4, so the
density the paper draws is unchanged, and outside |z_i| > 5 the density falls by e^{-10} per unit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

W1 = "sin(pi*z1/2)"
W2 = "3*exp(-((z1 - 1)/0.6)**2/2)"
W3 = "3*sigmoid((z1 - 1)/0.3)"
SOFT_BOX = "log(sigmoid(10*(5 - Max(Abs(z1), Abs(z2)))))"  # subtracted from U
PAPER_WINDOW = ((-4.0, 4.0), (-4.0, 4.0))  # the paper draws U1–U4 on (−4, 4)²


@dataclass(frozen=True)
class Target:
    name: str
    expression: str
    description: str
    log_z: float  # reference ln Z
    log_z_source: str
    formula: str = ""  # a shorter human-readable form, where the expression is long
    window: tuple[tuple[float, float], tuple[float, float]] | None = None  # where figures look

    @property
    def shown(self) -> str:
        return self.formula or self.expression


_RING8_SIGMA = 0.5
_RING8 = (
    "-log("
    + " + ".join(
        f"exp(-((z1 - {3 * math.cos(2 * math.pi * k / 8):.12g})**2"
        f" + (z2 - {3 * math.sin(2 * math.pi * k / 8):.12g})**2)/(2*{_RING8_SIGMA}**2))"
        for k in range(8)
    )
    + ")"
)

TARGETS: dict[str, Target] = {
    t.name: t
    for t in [
        Target(
            "u1",
            "0.5*((sqrt(z1**2 + z2**2) - 2)/0.4)**2"
            " - log(exp(-0.5*((z1 - 2)/0.6)**2) + exp(-0.5*((z1 + 2)/0.6)**2))",
            "paper U1: a ring with two modes on the z1 axis",
            1.8775,
            "quadrature",
            window=PAPER_WINDOW,
        ),
        Target(
            "u2",
            f"0.5*((z2 - {W1})/0.4)**2 - {SOFT_BOX}",
            "paper U2: a sine wave (soft box |z|∞ < 5 makes it proper)",
            2.3052,
            "quadrature",
            window=PAPER_WINDOW,
        ),
        Target(
            "u3",
            f"-log(exp(-0.5*((z2 - {W1})/0.35)**2) + exp(-0.5*((z2 - {W1} + {W2})/0.35)**2))"
            f" - {SOFT_BOX}",
            "paper U3: a sine wave that splits in two (soft box |z|∞ < 5)",
            2.8648,
            "quadrature",
            window=PAPER_WINDOW,
        ),
        Target(
            "u4",
            f"-log(exp(-0.5*((z2 - {W1})/0.4)**2) + exp(-0.5*((z2 - {W1} + {W3})/0.35)**2))"
            f" - {SOFT_BOX}",
            "paper U4: two sine waves offset by a sigmoid step (soft box |z|∞ < 5)",
            2.9337,
            "quadrature",
            window=PAPER_WINDOW,
        ),
        Target(
            "ring",
            "0.5*((sqrt(z1**2 + z2**2) - 2)/0.4)**2",
            "a ring of radius 2 and width 0.4",
            2.5337,
            "quadrature",
        ),
        Target(
            "ring8",
            _RING8,
            f"eight Gaussians (σ = {_RING8_SIGMA}) evenly spaced on a circle of radius 3",
            math.log(8 * 2 * math.pi * _RING8_SIGMA**2),
            "closed form ln(8·2πσ²)",
            f"-log(Σ_k exp(-|z - 3(cos(2πk/8), sin(2πk/8))|²/(2·{_RING8_SIGMA}²))), k = 0…7",
        ),
        Target(
            "moons",
            "0.5*((sqrt(z1**2 + z2**2) - 2)/0.2)**2 + 0.5*((Abs(z1) - 2)/0.3)**2"
            " - log(1 + exp(-4*Abs(z1)/0.09))",
            "two moons (the energy of normflows' TwoMoons)",
            0.8042,
            "quadrature",
        ),
    ]
}


@dataclass(frozen=True)
class Family:
    """A built-in family of targets U(z1, z2; c) with its conditions' default ranges (nfcli fit
    NAME: no --condition needed) and its reference ln Z as a function of c, where one is known."""

    name: str
    expression: str
    description: str
    conditions: tuple[tuple[str, float, float], ...]


_U1_ROTATED_A = "(cos(theta)*z1 + sin(theta)*z2)"  # the first coordinate of R(−θ) z

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        Family(
            "u1_rotated",
            "0.5*((sqrt(z1**2 + z2**2) - 2)/0.4)**2"
            f" - log(exp(-0.5*(({_U1_ROTATED_A} - 2)/0.6)**2)"
            f" + exp(-0.5*(({_U1_ROTATED_A} + 2)/0.6)**2))",
            "paper U1 rotated by theta about the origin, p_θ(z) = p_U1(R(−θ) z) (ln Z 1.8775 at "
            "every θ): the seed work's amortised family",
            (("theta", -math.pi, math.pi),),
        ),
        Family(
            "ring_width",
            "0.5*((sqrt(z1**2 + z2**2) - 2)/s)**2",
            "a ring of radius 2 whose width s is the condition: its normaliser changes with s",
            (("s", 0.2, 1.0),),
        ),
    ]
}
