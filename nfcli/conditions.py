"""Families of targets U(z; c): which variables of an energy are conditions c, their ranges, and
the values (``--at``) at which a conditional fit is sampled, evaluated or drawn.

A conditional energy is an ordinary ``Energy`` over (z, c), its columns the z variables first and
then the conditions in the order given; ``ConditionalEnergy`` says where the split is and gives
U(z; c) for a batch of conditions, or an ordinary Energy of z with c bound (``at``), so that
everything nfcli does with an energy (quadrature, reports, figures) works per condition.

    --condition theta=-3.1416:3.1416        a condition and its range [lo, hi]
    --at theta=0.7                          one value
    --at theta=-3:3:9                       9 values from −3 to 3 (ends included)
    --at a=0:1:3,b=2                        the grid of every combination (here 3 × 1)
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from nfcli.energy import Energy, load_energy
from nfcli.errors import NfcliError
from nfcli.targets import FAMILIES

NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Condition:
    """A condition variable and the range [lo, hi] a conditional flow is trained over."""

    name: str
    lo: float
    hi: float

    def __str__(self) -> str:
        return f"{self.name}={self.lo:g}:{self.hi:g}"


def _number(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise NfcliError(f"{where}: {text!r} is not a number.") from None
    if not math.isfinite(value):
        raise NfcliError(f"{where}: {text!r} must be finite.")
    return value


def parse_condition(text: str) -> Condition:
    """'theta=-3.1416:3.1416' → Condition("theta", −3.1416, 3.1416), or a one-paragraph error."""
    name, eq, rng = text.strip().partition("=")
    name = name.strip()
    parts = rng.split(":")
    if not eq or not NAME.fullmatch(name) or len(parts) != 2:
        raise NfcliError(
            f"--condition {text}: write NAME=LO:HI, the condition variable of the expression and "
            "the range to train over, e.g. --condition theta=-3.1416:3.1416."
        )
    where = f"--condition {text}"
    lo, hi = (_number(p.strip(), where) for p in parts)
    if not lo < hi:
        raise NfcliError(f"{where}: the range must have LO < HI, e.g. {name}=0:1.")
    return Condition(name, lo, hi)


def parse_conditions(values: Sequence[str]) -> list[Condition]:
    """Every --condition, each name once."""
    conditions = [parse_condition(v) for v in values]
    names = [c.name for c in conditions]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise NfcliError(f"--condition {', '.join(twice)} is given twice; give each once.")
    return conditions


def parse_at(text: str, conditions: Sequence[Condition], extrapolate: bool = False) -> Tensor:
    """The condition values of ``--at`` (see the module's docstring) as (M, C) float64, in the
    order of ``conditions``: every condition must be given, each a value or LO:HI:N, inside its
    trained range unless ``extrapolate``."""
    known = {c.name: c for c in conditions}
    expected = ", ".join(str(c) for c in conditions)
    values: dict[str, list[float]] = {}
    for part in _split(text):
        name, eq, spec = part.partition("=")
        name = name.strip()
        if not eq or not name:
            raise NfcliError(
                f"--at {text}: write NAME=VALUE or NAME=LO:HI:N for each condition ({expected}), "
                "e.g. --at theta=0.7 or --at theta=-3:3:9."
            )
        if name not in known:
            raise NfcliError(
                f"--at {text}: {name} is not a condition of this fit; its conditions are "
                f"{expected}."
            )
        if name in values:
            raise NfcliError(f"--at {text}: {name} is given twice; give each condition once.")
        values[name] = _values(spec, f"--at {part}")
    missing = [c.name for c in conditions if c.name not in values]
    if missing:
        raise NfcliError(
            f"--at {text} does not give {', '.join(missing)}: every condition needs a value "
            f"({expected}), e.g. --at {conditions[0].name}={_mid(conditions[0]):g}."
        )
    for c in conditions:
        outside = [v for v in values[c.name] if not c.lo <= v <= c.hi]
        if outside and not extrapolate:
            raise NfcliError(
                f"--at {c.name}={outside[0]:g} is outside the range the flow was trained on, "
                f"{c.name} in [{c.lo:g}, {c.hi:g}]: a conditional flow is only fitted there. "
                f"Choose values in that range, or refit with a wider --condition {c.name}=LO:HI."
            )
    grid = list(itertools.product(*(values[c.name] for c in conditions)))
    return torch.tensor(grid, dtype=torch.float64)


def _split(text: str) -> list[str]:
    """'a=0:1:3,b=2' → ['a=0:1:3', 'b=2']."""
    return [p.strip() for p in text.split(",") if p.strip()]


def _values(spec: str, where: str) -> list[float]:
    parts = spec.split(":")
    if len(parts) == 1:
        return [_number(parts[0], where)]
    if len(parts) == 3:
        lo, hi = _number(parts[0], where), _number(parts[1], where)
        try:
            n = int(parts[2])
        except ValueError:
            n = 0
        if n < 1 or (n == 1 and lo != hi):
            raise NfcliError(f"{where}: N in LO:HI:N must be a whole number ≥ 2, e.g. -3:3:9.")
        return torch.linspace(lo, hi, n, dtype=torch.float64).tolist()
    raise NfcliError(f"{where}: write a value or LO:HI:N, e.g. 0.7 or -3:3:9.")


def _mid(c: Condition) -> float:
    return 0.5 * (c.lo + c.hi)


@dataclass
class ConditionalEnergy:
    """U(z; c): ``energy`` is over (z, c), z's columns first, then ``conditions`` in order."""

    energy: Energy
    conditions: list[Condition]

    @property
    def dim(self) -> int:
        """The dimension of z."""
        return self.energy.dim - len(self.conditions)

    @property
    def names(self) -> tuple[str, ...]:
        """z's variable names."""
        return self.energy.names[: self.dim]

    @property
    def lo(self) -> Tensor:
        return torch.tensor([c.lo for c in self.conditions], dtype=torch.float64)

    @property
    def hi(self) -> Tensor:
        return torch.tensor([c.hi for c in self.conditions], dtype=torch.float64)

    def __call__(self, z: Tensor, c: Tensor) -> Tensor:
        """U at z (..., N, D) given c (..., C), one condition per leading index (broadcast over N):
        shape (..., N)."""
        c = c.to(z).unsqueeze(-2).expand(*z.shape[:-1], c.shape[-1])
        zc = torch.cat([z, c], -1)
        return self.energy(zc.reshape(-1, zc.shape[-1])).reshape(z.shape[:-1])

    def at(self, c: Tensor) -> Energy:
        """The ordinary Energy of z with c (C,) bound: its source binds the conditions as
        constants, so that it prints (and reloads) as the expression at that c."""
        c = c.detach().double().cpu()

        def fn(z: Tensor) -> Tensor:
            cz = c.to(z).expand(len(z), len(c))
            return self.energy(torch.cat([z, cz], -1))

        bound = {cond.name: float(v) for cond, v in zip(self.conditions, c, strict=True)}
        source = dict(self.energy.source, vars=list(self.names))
        source["constants"] = {**(source.get("constants") or {}), **bound}
        return Energy(fn, self.names, source)


def load_conditional_energy(
    target: str,
    conditions: Sequence[Condition],
    names: Sequence[str] | None = None,
    constants: Mapping[str, float] | None = None,
) -> ConditionalEnergy:
    """The energy of TARGET (an expression, or a built-in family of ``nfcli.targets.FAMILIES``,
    whose conditions and ranges are the default) with ``conditions`` as c: every other variable
    is z, in ``names``' order if given, else the expression's."""
    family = FAMILIES.get(target.strip())
    if family is not None:
        target = family.expression
        conditions = conditions or [Condition(*c) for c in family.conditions]
    if not conditions:
        raise NfcliError(
            f"{target}: a conditional fit needs at least one condition; name it and its range "
            "with --condition NAME=LO:HI, e.g. --condition theta=-3.1416:3.1416."
        )
    if target.strip().endswith(".py"):
        return _file_family(target, conditions, names)
    whole = load_energy(target, None, constants, check_proper=False)
    cond_names = [c.name for c in conditions]
    absent = [n for n in cond_names if n not in whole.names]
    if absent:
        raise NfcliError(
            f"--condition {', '.join(absent)}: the target has no variable of that name; its "
            f"variables are {', '.join(whole.names)}. Name a condition that the expression uses."
        )
    z_names = list(names) if names else [n for n in whole.names if n not in cond_names]
    if not z_names:
        raise NfcliError(
            "Every variable of the target is a condition, so there is nothing left to sample: "
            f"the variables are {', '.join(whole.names)}; keep at least one out of --condition."
        )
    energy = load_energy(target, [*z_names, *cond_names], constants, check_proper=False)
    if family is not None:
        energy.source["name"] = family.name
    return ConditionalEnergy(energy, list(conditions))


def _file_family(
    target: str, conditions: Sequence[Condition], names: Sequence[str] | None
) -> ConditionalEnergy:
    """A Python file's family: its CONDITION names, each given a range by ``conditions``."""
    energy = load_energy(target, names, conditional=True)
    declared = energy.source.get("conditions") or []
    if not declared:
        raise NfcliError(
            f"{target} lists no CONDITION, so it is one target, not a family. Fit it without "
            '--condition, or add CONDITION = ["theta"] and take c in energy(z, c).'
        )
    given = {c.name: c for c in conditions}
    if sorted(given) != sorted(declared):
        raise NfcliError(
            f"{target} lists CONDITION = {declared}; --condition must give a range for each of "
            f"them and nothing else (it gave {', '.join(given) or 'none'}), e.g. "
            + " ".join(f"--condition {n}=LO:HI" for n in declared)
            + "."
        )
    return ConditionalEnergy(energy, [given[n] for n in declared])
