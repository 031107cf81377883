"""A flow: a base distribution (``nfcli.bases``) pushed through a list of transforms
(``nfcli.transforms``).

z_0 ~ q0 (by default N(loc, diag(scale²))), z_K = f_K ∘ … ∘ f_1(z_0), and

    ln q_K(z_K) = ln q0(z_0) − Σ_k ln |det ∂f_k/∂z_{k−1}|.

A flow is built from a plain architecture spec, ``{"base": {...}, "transforms": [{...}, ...]}``,
which the checkpoint stores; ``architecture`` writes the spec of each flow type that ``nfcli fit
--flow`` offers (FLOW_TYPES), from the fit's K and options.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from nfcli.bases import DiagonalGaussian, build_base  # noqa: F401  (DiagonalGaussian re-exported)
from nfcli.errors import NfcliError
from nfcli.mode import cholesky
from nfcli.transforms import FixedAffine, build, planar, radial  # noqa: F401  (re-exported)

FLOW_TYPES = ("planar", "radial", "nice", "realnvp", "spline", "affine")
COUPLING_TYPES = {
    "nice": "additive_coupling",
    "realnvp": "affine_coupling",
    "spline": "spline_coupling",
}
DEFAULT_K = {"planar": 32, "radial": 32, "nice": 8, "realnvp": 8, "spline": 8, "affine": 1}
DEFAULT_HIDDEN = [64, 64]
DEFAULT_BINS = 8
MIXING = "orthogonal"
BASE_TYPES = ("gaussian", "student_t")
STUDENT_DOF = 30.0


def architecture(
    flow: str,
    K: int,
    init_scale: float = 0.25,
    base_scale: float = 2.0,
    hidden: list[int] | None = None,
    bins: int | None = None,
    mixing: str = MIXING,
    start: str = "origin",
    base: str = "gaussian",
    dim: int | None = None,
    components: int = 1,
) -> dict[str, Any]:
    """The spec of a flow type (one of FLOW_TYPES) with K layers, on a ``base`` of BASE_TYPES
    (``base_spec``; the base's initial scale is as below whichever it is).

    planar, radial: N(0, base_scale²) (learnt loc and scale) → K planar or radial layers; for a
    1-D target (``dim`` 1) the planar layers are ``CentredPlanar``, which a 1-D fit cannot strand
    at w → 0 (``nfcli.transforms.CentredPlanar``).
    nice, realnvp, spline: N(0, I) (learnt) → K couplings (additive, affine or rational-quadratic
    spline) with a fixed ``mixing`` between them → a diagonal affine layer that starts at scale
    base_scale (NICE's final scaling), so the couplings work at unit scale, where the spline's
    interval [−5, 5] is.
    affine: N(0, I) → one full lower-triangular affine layer (q = N(m, LLᵀ)), started at
    N(0, base_scale²).

    ``start`` "mode": every flow type is N(0, I) → its layers, at unit scale → a learnt full
    affine layer (the identity at first) → a fixed one, y = Lz + m, which ``Flow.start_at`` sets
    to a Gaussian start N(m, LLᵀ) (the Laplace approximation, ``nfcli.mode.gaussian_start``):
    every learnt layer then works in coordinates where the posterior is roughly standard,
    whatever its scales and correlations. With ``components`` M > 1 (a start from several modes,
    ``nfcli.mixture``) the base is a mixture of M Gaussians instead (``GaussianMixture``), set by
    ``Flow.start_at_modes``."""
    base_spec(base, 1.0)  # an unknown base is refused before anything else
    if start not in ("origin", "mode"):
        raise NfcliError(f"unknown start {start!r}: choose origin or mode")
    if start == "mode":
        spec = architecture(flow, K, init_scale, 1.0, hidden, bins, mixing, base=base, dim=dim)
        layers = [
            t for t in spec["transforms"] if t["type"] not in ("elementwise_affine", "affine")
        ]
        first = base_spec(base, 1.0)
        if components > 1:
            first = {"type": "gaussian_mixture", "scale": 1.0, "components": components}
        return {
            "base": first,
            "transforms": [*layers, {"type": "affine"}, {"type": "fixed_affine"}],
        }
    if flow in ("planar", "radial"):
        kind = "centred_planar" if flow == "planar" and dim == 1 else flow
        return {
            "base": base_spec(base, base_scale),
            "transforms": [{"type": kind, "K": K, "init_scale": init_scale}],
        }
    if flow == "affine":
        return {
            "base": base_spec(base, 1.0),
            "transforms": [{"type": "affine"}, {"type": "elementwise_affine", "scale": base_scale}],
        }
    if flow not in COUPLING_TYPES:
        raise NfcliError(f"unknown flow type {flow!r}; choose one of {', '.join(FLOW_TYPES)}")
    coupling: dict[str, Any] = {
        "type": COUPLING_TYPES[flow],
        "hidden": list(hidden or DEFAULT_HIDDEN),
    }
    if flow == "spline":
        coupling["bins"] = bins or DEFAULT_BINS
    transforms: list[dict[str, Any]] = []
    for k in range(K):
        if k:
            transforms.append({"type": mixing})
        transforms.append(dict(coupling))
    transforms.append({"type": "elementwise_affine", "scale": base_scale})
    return {"base": base_spec(base, 1.0), "transforms": transforms}


def base_spec(base: str, scale: float) -> dict[str, Any]:
    """The spec (``nfcli.bases``) of a base of BASE_TYPES with initial scale ``scale``:
    "gaussian", N(0, scale²) with learnt loc and scale; "student_t", the same with Student-t
    coordinates and learnt degrees of freedom, starting at STUDENT_DOF (close to Gaussian)."""
    if base == "gaussian":
        return {"type": "diagonal_gaussian", "scale": scale}
    if base == "student_t":
        return {"type": "student_t", "scale": scale, "dof": STUDENT_DOF}
    raise NfcliError(f"unknown base {base!r}; choose one of {', '.join(BASE_TYPES)}")


class Flow(nn.Module):
    """q_K: a base (``nfcli.bases``) pushed through ``transforms``, built from ``architecture``.

    With ``restarts`` = R > 1 it holds R independent flows whose parameters (and buffers) carry a
    leading dimension R, so that they are fitted as one batched computation (``rsample_all``);
    ``select`` takes one of them out as a single flow. The single-flow methods (``rsample``,
    ``sample``, ``log_prob``) need R = 1.
    """

    def __init__(self, dim: int, architecture: dict[str, Any], restarts: int = 1) -> None:
        super().__init__()
        self.dim, self.restarts = dim, restarts
        self.architecture = copy.deepcopy(architecture)
        self.base = build_base(architecture["base"], dim, restarts)
        self.transforms = nn.ModuleList(
            build(spec, dim, restarts) for spec in architecture["transforms"]
        )

    @classmethod
    def of(
        cls,
        dim: int,
        K: int,
        kind: str = "planar",
        init_scale: float = 1.0,
        base_scale: float = 1.0,
        restarts: int = 1,
        **options: Any,
    ) -> Flow:
        """A flow of one of FLOW_TYPES (see ``architecture``)."""
        return cls(dim, architecture(kind, K, init_scale, base_scale, **options), restarts)

    @property
    def K(self) -> int:  # noqa: N802 (the paper's K)
        """The number of layers (the transforms' ``layers``)."""
        return sum(t.layers for t in self.transforms)

    def transform(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """z_0 (R, N, D) → (z_K (R, N, D), Σ ln|det J_k| (R, N))."""
        log_det = None
        for t in self.transforms:
            z, ld = t(z)
            log_det = ld if log_det is None else log_det + ld
        return z, log_det if log_det is not None else z.new_zeros(z.shape[:-1])

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """z_0 with transform(z_0) = y (R, N, D), and Σ ln|det ∂z_0/∂y| (R, N) = −Σ ln|det J_k|."""
        log_det = None
        for t in reversed(self.transforms):
            y, ld = t.inverse(y)
            log_det = ld if log_det is None else log_det + ld
        return y, log_det if log_det is not None else y.new_zeros(y.shape[:-1])

    def rsample_all(
        self, n: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """n samples of each of the R flows, (R, n, D), and their ln q (R, n), differentiable."""
        return self.push(self.base.standard_rsample(n, generator))

    def push(self, eps: Tensor) -> tuple[Tensor, Tensor]:
        """Standard base draws ε (R, N, D) through the base's location and scale and the
        transforms: (z_K (R, N, D), ln q_K(z_K) (R, N)). Free of random draws, so that the
        training loop can compile it (``nfcli.compiled.choose_flow``) and draw ε eagerly."""
        z0, log_q0 = self.base.push(eps)
        z, log_det = self.transform(z0)
        return z, log_q0 - log_det

    def rsample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """n samples z_K ~ q_K (n, D) with ln q_K(z_K) = ln q0(z0) − Σ ln|det J_k| (n,)."""
        self._single()
        z, log_q = self.rsample_all(n, generator)
        return z[0], log_q[0]

    @torch.no_grad()
    def log_prob(self, y: Tensor, chunk: int = 65536) -> Tensor:
        """ln q_K(y), exact at any point: invert the transforms to z0, then
        ln q_K(y) = ln q0(z0) + ln|det ∂z0/∂y|. Compute in float64 for 1e-6 accuracy."""
        self._single()
        parts = []
        for i in range(0, len(y), chunk):
            z0, log_det = self.inverse(y[i : i + chunk].unsqueeze(0))
            parts.append(self.base.log_prob(z0)[0] + log_det[0])
        return torch.cat(parts) if parts else y.new_zeros(0)

    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator | None = None, chunk: int = 65536
    ) -> Tensor:
        """n samples of q_K, without gradients, drawn in chunks to bound memory."""
        parts = [self.rsample(min(chunk, n - i), generator)[0] for i in range(0, n, chunk)]
        return torch.cat(parts) if parts else self.base.loc.new_zeros(0, self.dim)

    @torch.no_grad()
    def trajectory(
        self, n: int, generator: torch.Generator | None = None
    ) -> tuple[list[Tensor], Tensor]:
        """n draws followed through the flow: [z_0, z_1, …, z_K] after each of the K layers, each
        (n, D) (a transform of 0 layers, such as a mixing or a final scaling, is folded into the
        state before it), and each draw's distance from the base's centre in the base's scales,
        ‖(z_0 − loc)/σ‖ (n,) (``standardise``; for a Gaussian base, in standard deviations)."""
        self._single()
        z0, _ = self.base.rsample(n, generator)
        radius = self.base.standardise(z0)[0].norm(dim=-1)
        zs = [z0]
        for t in self.transforms:
            steps = t.steps(zs[-1])
            if steps:
                zs.extend(steps)
            else:
                zs[-1] = t(zs[-1])[0]
        return [z[0] for z in zs], radius

    @torch.no_grad()
    def start_at(self, mean: Tensor, covariance: Tensor) -> None:
        """Set the last transform, a fixed affine layer y = Lz + m (architecture with start
        "mode"), to L = chol(``covariance``) (D, D) and m = ``mean`` (D,), in every restart; the
        layers before it start as the identity on N(0, I), so q starts as N(mean, covariance)."""
        last = self.transforms[-1] if len(self.transforms) else None
        if not isinstance(last, FixedAffine):
            raise ValueError("start_at needs a flow that ends in a fixed affine (start='mode')")
        L = cholesky(covariance.to(torch.float64)).to(last.scale_tril)
        last.shift.copy_(mean.to(last.shift).expand_as(last.shift))
        last.scale_tril.copy_(L.expand_as(last.scale_tril))

    @torch.no_grad()
    def start_at_modes(self, components: Any) -> None:
        """A start from several modes (``nfcli.mixture.Components``): the fixed affine layer at
        their mixture's moments and the mixture base's components, in its coordinates, at the
        modes' Gaussians."""
        self.start_at(components.mean, components.covariance)
        # the layers before the fixed affine start as a linear map y ↦ Ay + b (couplings at the
        # identity, fixed rotations between them): the base's components are the modes' mapped
        # back through it, so that q starts as the modes' mixture
        D = self.dim
        points = torch.cat([torch.zeros(1, D), torch.eye(D)]).to(self.base.loc)
        y = points.unsqueeze(0).expand(self.restarts, -1, -1)
        for t in self.transforms[:-1]:
            y, _ = t(y)
        b = y[0, 0].double()
        A = (y[0, 1:].double() - b).T
        means = torch.linalg.solve(A, (components.means - b).T).T
        A_inv = torch.linalg.inv(A)
        covariances = A_inv @ components.covariances @ A_inv.T
        symmetric = 0.5 * (covariances + covariances.transpose(-1, -2))
        self.base.set_components(means, symmetric, components.log_weights)

    def float64(self) -> Flow:
        """This flow in float64, for exact densities: itself if it already is, else a float64
        copy (the flow it was called on is left as it was)."""
        if self.base.loc.dtype == torch.float64:
            return self
        return copy.deepcopy(self).double()

    def select(self, r: int) -> Flow:
        """Restart r as a single flow (a copy)."""
        flow = Flow(self.dim, self.architecture, restarts=1).to(self.base.loc)
        flow.load_state_dict(
            {k: v[r : r + 1].detach().clone() for k, v in self.state_dict().items()}
        )
        return flow

    def _single(self) -> None:
        if self.restarts != 1:
            raise ValueError(f"this Flow holds {self.restarts} restarts: select(r) one first")
