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

A flow's architecture stores the base's spec (``{"type": "diagonal_gaussian", "scale": 1.0}``,
``{"type": "student_t", "scale": 1.0, "dof": 30.0}``), whose ``scale`` is the initial σ.

A heavy-tailed base (``StudentT``) is one way for a flow to get heavy tails: a Lipschitz map of a
light-tailed base has light tails, whatever its depth, and flows such as RealNVP cannot turn a
Gaussian into polynomial tails (Jaini, Kobyzev, Yu & Brubaker 2020, "Tails of Lipschitz
triangular flows", ICML, arXiv 1907.04481); their tail-adaptive flows learn the degrees of freedom
of a Student-t base with the map, per coordinate as here.
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
        return self.push(self.standard_rsample(n, generator))

    def push(self, eps: Tensor) -> tuple[Tensor, Tensor]:
        """z = loc + σ·ε (R, N, D) and ln q0(z) (R, N) for standard draws ε (R, N, D)."""
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


@register_base
class GaussianMixture(Base):
    """q0(z) = Σ_m w_m N(y; a_m, L_m L_mᵀ)/Π_d σ_d at y = (z − loc)/σ: a mixture of M
    full-covariance Gaussians for R flows, the start from several modes of p (``nfcli.mixture``).

        ln q0(z) = logsumexp_m [ln w_m − ½‖L_m⁻¹(y − a_m)‖² − Σ_d ln L_m,dd] − (D/2) ln 2π
                   − Σ_d ln σ_d,

    with means a (R, M, D) and Cholesky factors L = tril(T, −1) + diag(exp(ℓ)) (T (R, M, D, D),
    ℓ (R, M, D)) learnt, and the weights w a buffer ``log_weights`` (R, M), not learnt by the
    gradient: reverse KL would anneal a mode's weight away (the mode-seeking that loses modes), so
    they are set from importance sampling instead (``nfcli.mixture.reweight``).

    Draws: the components are chosen by systematic sampling, about n·w_m draws of each (an
    unbiased, stratified estimate of an expectation under q0, with a random offset per restart)
    and shuffled, and y = a_m + L_m η, η ~ N(0, I): reparametrised in a and L, not in w."""

    name = "gaussian_mixture"

    def __init__(self, dim: int, scale: float = 1.0, components: int = 2, restarts: int = 1):
        super().__init__(dim, scale, restarts)
        if components < 1:
            raise NfcliError(
                f"A Gaussian mixture base needs at least 1 component; got {components}."
            )
        self.components = int(components)
        M = self.components
        self.means = nn.Parameter(torch.zeros(restarts, M, dim))
        self.tril = nn.Parameter(torch.zeros(restarts, M, dim, dim))
        self.log_diag = nn.Parameter(torch.zeros(restarts, M, dim))
        self.register_buffer("log_weights", torch.full((restarts, M), -math.log(M)))

    def options(self) -> dict[str, Any]:
        return {"scale": self.scale, "components": self.components}

    @property
    def cholesky(self) -> Tensor:
        """L_m (R, M, D, D): lower triangular with a positive diagonal."""
        return torch.tril(self.tril, -1) + torch.diag_embed(self.log_diag.exp())

    def choose(self, n: int, generator: torch.Generator | None) -> Tensor:
        """n component indices per restart (R, n) by systematic sampling on the weights."""
        R, M = self.log_weights.shape
        w = torch.softmax(self.log_weights.double(), -1)
        edges = w.cumsum(-1)
        edges[:, -1] = 1.0
        offset = torch.rand(R, 1, generator=generator, dtype=torch.float64, device=w.device)
        points = (offset + torch.arange(n, dtype=torch.float64, device=w.device)) / n
        c = torch.searchsorted(edges, points.contiguous()).clamp_max(M - 1)
        # in random order: the first k of n draws are then draws of q too, not of one component
        order = torch.rand(R, n, generator=generator, device=w.device).argsort(-1)
        return c.gather(1, order)

    def standard_rsample(self, n: int, generator: torch.Generator | None) -> Tensor:
        R, D = self.loc.shape
        c = self.choose(n, generator)  # (R, n)
        eta = torch.randn(
            R, n, D, generator=generator, dtype=self.loc.dtype, device=self.loc.device
        )
        rows = torch.arange(R, device=c.device)[:, None]
        L = self.cholesky[rows, c]  # (R, n, D, D)
        return self.means[rows, c] + (L @ eta.unsqueeze(-1)).squeeze(-1)

    def component_log_prob(self, eps: Tensor) -> Tensor:
        """ln N(y; a_m, L_m L_mᵀ) of each component at standardised points y (R, N, D) →
        (R, M, N)."""
        L = self.cholesky  # (R, M, D, D)
        diff = eps.unsqueeze(1) - self.means.unsqueeze(2)  # (R, M, N, D)
        r = torch.linalg.solve_triangular(L, diff.transpose(-1, -2), upper=False)
        log_det = self.log_diag.sum(-1, keepdim=True)  # (R, M, 1)
        return -0.5 * r.square().sum(-2) - log_det - 0.5 * eps.shape[-1] * _LOG_2PI

    def log_prob_standard(self, eps: Tensor) -> Tensor:
        log_w = self.log_weights.to(eps.dtype).unsqueeze(-1)  # (R, M, 1)
        mixed = torch.logsumexp(log_w + self.component_log_prob(eps), 1)
        return mixed - self.log_scale.sum(-1, keepdim=True)

    @torch.no_grad()
    def set_components(self, means: Tensor, covariances: Tensor, log_weights: Tensor) -> None:
        """Every restart's components to N(means[m], covariances[m]) (M, D), (M, D, D) in the
        standardised coordinates y, with weights exp(log_weights) (M,), normalised here."""
        L = torch.linalg.cholesky(covariances.to(torch.float64))
        self.means.copy_(means.to(self.means).expand_as(self.means))
        self.log_diag.copy_(
            L.diagonal(dim1=-2, dim2=-1).log().to(self.log_diag).expand_as(self.log_diag)
        )
        self.tril.copy_(torch.tril(L, -1).to(self.tril).expand_as(self.tril))
        self.log_weights.copy_(
            torch.log_softmax(log_weights.double(), -1)
            .to(self.log_weights)
            .expand_as(self.log_weights)
        )


@register_base
class StudentT(Base):
    """q0(z) = Π_d t_ν_d((z_d − loc_d)/σ_d)/σ_d: independent Student-t coordinates with learnt
    location, scale and degrees of freedom ν_d, all of shape (R, D).

        ln q0(z) = Σ_d [lnΓ((ν_d + 1)/2) − lnΓ(ν_d/2) − ½ ln(ν_d π) − ln σ_d
                        − (ν_d + 1)/2 · ln(1 + ε_d²/ν_d)],   ε = (z − loc)/σ.

    ν = DOF_MIN + exp(dof_raw), so ν > 1: the base always has a mean, while its variance may be
    infinite (ν ≤ 2) if the target's tails ask for it. ``dof`` is the initial ν; the default 30
    starts close to a Gaussian, and the fit makes the tails heavier where the target has them.
    ν − 1 is learnt in log space because Adam moves a parameter by about its learning rate per
    step whatever the gradient's scale: with ν = 1 + softplus(ρ), linear in ν above a few, ν went
    from 30 to 19 in 2,000 steps at lr 5e-3 when the base alone was fitted to a Student-t with
    ν = 4, against 4.1 after 500 steps in log space (a tail-index parameter 1/(ν − 1) did as
    well).

    Sampling is reparametrised in loc, σ and ν: ε = η·√(ν/(2γ)), η ~ N(0, 1), γ ~ Gamma(ν/2, 1)
    (so 2γ ~ χ²_ν), where γ's derivative in ν comes from ``torch._standard_gamma``'s implicit
    gradient (as ``torch.distributions.Gamma.rsample``'s does). ``torch._standard_gamma`` takes no
    generator, so with a ``generator`` the γ are drawn from the device's global RNG seeded by one
    draw of the generator, inside ``torch.random.fork_rng`` (see ``_gamma``): the generator gives
    the same draws each time, and the caller's global random state is left as it was."""

    name = "student_t"
    DOF_MIN = 1.0

    def __init__(self, dim: int, scale: float = 1.0, dof: float = 30.0, restarts: int = 1) -> None:
        super().__init__(dim, scale, restarts)
        if not self.DOF_MIN < dof < math.inf:
            raise NfcliError(
                f"A Student-t base's initial degrees of freedom must be finite and above "
                f"{self.DOF_MIN:g}; got dof = {dof}."
            )
        self.initial_dof = float(dof)
        self.dof_raw = nn.Parameter(
            torch.full((restarts, dim), math.log(self.initial_dof - self.DOF_MIN))
        )

    @property
    def dof(self) -> Tensor:
        """ν (R, D)."""
        return self.DOF_MIN + torch.exp(self.dof_raw)

    def options(self) -> dict[str, Any]:
        return {"scale": self.scale, "dof": self.initial_dof}

    def standard_rsample(self, n: int, generator: torch.Generator | None) -> Tensor:
        R, D = self.loc.shape
        eta = torch.randn(
            R, n, D, generator=generator, dtype=self.loc.dtype, device=self.loc.device
        )
        nu = self.dof.unsqueeze(1).expand(R, n, D)
        gamma = _gamma(nu / 2, generator).clamp_min(torch.finfo(nu.dtype).tiny)
        return eta * torch.sqrt(nu / (2 * gamma))

    def log_prob_standard(self, eps: Tensor) -> Tensor:
        nu = self.dof
        const = (
            torch.lgamma((nu + 1) / 2)
            - torch.lgamma(nu / 2)
            - 0.5 * torch.log(nu * math.pi)
            - self.log_scale
        ).sum(-1, keepdim=True)
        nu = nu.unsqueeze(1)
        return const - ((nu + 1) / 2 * torch.log1p(eps * eps / nu)).sum(-1)


def _gamma(concentration: Tensor, generator: torch.Generator | None) -> Tensor:
    """Gamma(α, 1) draws of α's shape, differentiable in α (``torch._standard_gamma``). Without a
    generator they come from the global RNG of α's device, as ``torch.randn`` without one does;
    with one, from that RNG seeded by a draw of the generator, inside ``fork_rng``, so that the
    draws depend on the generator's state alone and the global state is restored."""
    if generator is None:
        return torch._standard_gamma(concentration)
    seed = int(torch.randint(2**62, (), generator=generator, device=generator.device))
    device = concentration.device
    cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=[device] if cuda else [], device_type="cuda"):
        if cuda:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        else:
            torch.default_generator.manual_seed(seed)
        return torch._standard_gamma(concentration)
