"""The base distributions q0 a flow starts from, registered by name as the transforms are.

Every base holds R independent distributions (``--restarts``) over D variables, and is a
location-scale family with parameters ``loc`` and ``log_scale`` of shape (R, D) (and any of its
own, also with the leading R axis, so that ``Flow.select`` can slice every entry of the state
dict [r:r+1]):

    z = loc + σ·ε,  σ = exp(log_scale),  ε from the standard member of the family;

    rsample(n, generator) -> (z (R, n, D), ln q0(z) (R, n))     reparametrised in every parameter
    log_prob(z (R, N, D)) -> ln q0(z) (R, N)
    standardise(z)        -> ε = (z − loc)/σ (R, N, D)
    spec()                -> the plain dict that ``build_base`` rebuilds the base from

A flow's architecture stores the base's spec (``{"type": "diagonal_gaussian", "scale": 1.0}``),
whose ``scale`` is the initial σ.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from nfcli.errors import NfcliError

BASES: dict[str, type[Base]] = {}


def register_base(cls: type[Base]) -> type[Base]:
    BASES[cls.name] = cls
    return cls


def build_base(spec: dict[str, Any], dim: int, restarts: int = 1) -> Base:
    """The base a ``spec()`` dict describes, for ``restarts`` flows in ``dim`` dimensions."""
    options = dict(spec)
    kind = options.pop("type", None)
    if kind not in BASES:
        raise NfcliError(
            f"Unknown base distribution type {kind!r} in the flow's architecture. Known types: "
            f"{', '.join(sorted(BASES))}."
        )
    return BASES[kind](dim, restarts=restarts, **options)


class Base(nn.Module):
    """A location-scale family q0(z) = Π_d p((z_d − loc_d)/σ_d)/σ_d for R flows (see the module
    docstring); a subclass gives the standard member's sampler and log-density."""

    name: ClassVar[str]

    def __init__(self, dim: int, scale: float = 1.0, restarts: int = 1) -> None:
        super().__init__()
        self.scale = float(scale)
        self.loc = nn.Parameter(torch.zeros(restarts, dim))
        self.log_scale = nn.Parameter(torch.full((restarts, dim), math.log(scale)))

    def rsample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """z (R, n, D) = loc + σ·ε and ln q0(z) (R, n), differentiable in the parameters."""
        eps = self.standard_rsample(n, generator)
        z = self.loc.unsqueeze(1) + self.log_scale.exp().unsqueeze(1) * eps
        return z, self.log_prob_standard(eps)

    def log_prob(self, z: Tensor) -> Tensor:
        """ln q0(z) for z of shape (R, N, D) → (R, N)."""
        return self.log_prob_standard(self.standardise(z))

    def standardise(self, z: Tensor) -> Tensor:
        """ε = (z − loc)/σ for z of shape (R, N, D)."""
        return (z - self.loc.unsqueeze(1)) * torch.exp(-self.log_scale).unsqueeze(1)

    def standard_rsample(self, n: int, generator: torch.Generator | None) -> Tensor:
        """n draws of ε (R, n, D) from the standard member (reparametrised in its own
        parameters, if it has any)."""
        raise NotImplementedError

    def log_prob_standard(self, eps: Tensor) -> Tensor:
        """ln q0(z) (R, N) at the point whose standardised value is ε (R, N, D): the standard
        member's log-density summed over D, minus Σ_d ln σ_d."""
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        """The constructor's keyword arguments, as plain values."""
        return {"scale": self.scale}

    def spec(self) -> dict[str, Any]:
        return {"type": self.name, **self.options()}


@register_base
class DiagonalGaussian(Base):
    """q0(z) = N(z; loc, diag(σ²)) for R flows: loc, log_scale of shape (R, D)."""

    name = "diagonal_gaussian"

    def standard_rsample(self, n: int, generator: torch.Generator | None) -> Tensor:
        R, D = self.loc.shape
        return torch.randn(
            R, n, D, generator=generator, dtype=self.loc.dtype, device=self.loc.device
        )

    def log_prob_standard(self, eps: Tensor) -> Tensor:
        """ln q0 = −½‖ε‖² − Σ ln σ − (D/2) ln 2π at the standardised point ε = (z − loc)/σ."""
        log_sigma = self.log_scale.sum(-1, keepdim=True)
        return -0.5 * (eps * eps).sum(-1) - log_sigma - 0.5 * eps.shape[-1] * _LOG_2PI


_LOG_2PI = math.log(2 * math.pi)
