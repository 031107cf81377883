"""Conditional flows q(z | c): one fit for a family of targets U(z; c), whose flow parameters are
produced from the condition c by a small network (a hypernetwork, Ha, Dai & Le 2016, arXiv
1609.09106; the amortisation of Rezende & Mohamed 2015, arXiv 1505.05770, section 4).

For a flow architecture (``nfcli.flows.architecture``) with parameters ψ = (ψ_1, …, ψ_P) — the
base's loc, log-scale (and degrees of freedom) and every layer's parameters, flattened — the
conditional flow is

    ψ(c) = h_φ(x),   x = (c − mid)/half ∈ [−1, 1]^C,   mid = (lo + hi)/2,  half = (hi − lo)/2,
    q(z | c) = the flow of ``architecture`` with parameters ψ(c),

with h_φ an MLP (SiLU between layers, so ψ varies smoothly with c) whose last layer starts with
weight 0 and bias ψ_0, the initial parameters of ``Flow(dim, architecture)``: at initialisation
q(·|c) is the unconditional flow's initial q for every c.

Conditioning is an input, not a new class hierarchy. A ``Flow`` holds R flows along a leading
axis of every parameter and buffer (``restarts``), and no layer reads R but from its tensors'
shapes; so M conditions c_1 … c_M are M flows on that axis. A template ``Flow`` (R = 1) is called
through ``torch.func.functional_call`` with parameters {name: ψ(c) reshaped to (M, *shape)} and
its buffers (fixed permutations, random rotations, the fixed affine of a start at the mode)
expanded from 1 to M: every layer type of ``nfcli.transforms.REGISTRY`` and every base of
``nfcli.bases.BASES`` is conditional without code of its own, and M conditions cost one batched
evaluation, as M restarts do.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from nfcli.errors import NfcliError
from nfcli.flows import Flow


class _Template(Flow):
    """The flow whose tensors ``functional_call`` replaces: its ``forward(fn, *args)`` is
    ``fn(self, *args)``, so that any of Flow's methods can run with the replaced tensors."""

    def forward(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(self, *args)


def mlp(sizes: Sequence[int], activation: type[nn.Module]) -> nn.Sequential:
    """Linear layers of ``sizes`` (in, hidden…, out) with ``activation`` between them (none after
    the last): (…, sizes[0]) → (…, sizes[-1])."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class AmortisedFlow(nn.Module):
    """q(z | x): the flow of ``architecture`` whose every parameter ψ is h_φ(features(x)), an MLP
    of an input x (C,) per row (the amortisation of Rezende & Mohamed 2015 §4; a hypernetwork, Ha
    et al. 2016). ``ConditionalFlow`` is one whose input is a condition c standardised by its
    range; a VAE's encoder (``nfcli.vae``) is one whose input is an image.

    ``inputs``: C, the input's size; ``hidden``: the MLP's hidden layer sizes (none: ψ is affine in
    the input); ``activation``: between its layers (SiLU: ψ varies smoothly). Its last layer starts
    with weight 0 and bias ψ_0, the initial parameters of ``Flow(dim, architecture)``. The learnt
    parameters are the MLP's alone (``parameters()``); the flow's fixed buffers are in
    ``state_dict`` under ``flow.``.

    Shapes: inputs (M, C), one per row; samples and points (M, N, D), row m under input m.
    """

    def __init__(
        self,
        dim: int,
        architecture: dict[str, Any],
        inputs: int,
        hidden: Sequence[int] = (64, 64),
        activation: type[nn.Module] = nn.SiLU,
    ) -> None:
        super().__init__()
        self.dim, self.inputs = dim, inputs
        self.architecture = copy.deepcopy(architecture)
        self.hidden = [int(h) for h in hidden]
        # built first, so that under one seed the initial ψ_0 is an unconditional fit's init
        self.flow = _Template(dim, architecture, restarts=1)
        self._fixed = [name for name, _ in self.flow.named_buffers()]
        named = list(self.flow.named_parameters())
        self._names = [name for name, _ in named]
        self._shapes = [tuple(p.shape[1:]) for _, p in named]
        self._sizes = [math.prod(s) for s in self._shapes]
        initial = torch.cat([p.detach().reshape(-1) for _, p in named])
        _parameters_to_buffers(self.flow)
        self.net = mlp([inputs, *self.hidden, len(initial)], activation)
        with torch.no_grad():
            self.net[-1].weight.zero_()
            self.net[-1].bias.copy_(initial)

    @property
    def size(self) -> int:
        """P: the number of flow parameters ψ that the MLP produces per input."""
        return sum(self._sizes)

    # --- the map x ↦ ψ(x) ---------------------------------------------------------------------

    def features(self, x: Tensor) -> Tensor:
        """What the MLP sees of inputs x (M, C): x itself (``ConditionalFlow`` standardises)."""
        if x.dim() != 2 or x.shape[1] != self.inputs:
            raise ValueError(
                f"inputs must have shape (M, {self.inputs}), one per row; got {tuple(x.shape)}"
            )
        return x.to(self.net[-1].bias)

    def parameters_at(self, x: Tensor) -> dict[str, Tensor]:
        """ψ(x): x (M, C) → {name of a parameter of ``Flow(dim, architecture)``: (M, *shape)},
        differentiable in φ."""
        flat = self.net(self.features(x))
        parts = flat.split(self._sizes, dim=-1)
        return {
            name: part.reshape(len(x), *shape)
            for name, shape, part in zip(self._names, self._shapes, parts, strict=True)
        }

    def _call(self, c: Tensor, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(flow, *args) on the M flows ψ(c_1) … ψ(c_M) (c: the inputs, (M, C)), the fixed
        buffers shared by all."""
        tensors: dict[str, Tensor] = self.parameters_at(c)
        M = len(c)
        for name in self._fixed:
            buffer = self.flow.get_buffer(name)
            tensors[name] = buffer.expand(M, *buffer.shape[1:])
        return torch.func.functional_call(self.flow, tensors, (fn, *args))

    # --- sampling and densities ---------------------------------------------------------------

    def rsample(
        self, c: Tensor, n: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """n draws of each q(·|c_m): z (M, n, D) and ln q(z | c) (M, n) = ln q0(z0) − Σ ln|det J|,
        reparametrised, differentiable in φ. The base noise is drawn as ``Flow.rsample_all``
        draws it for M restarts."""
        return self._call(c, Flow.rsample_all, n, generator)

    def transform(self, c: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        """Base points z0 (M, N, D), row m through the layers of q(·|c_m): z_K (M, N, D) and
        Σ ln|det J_k| (M, N), differentiable."""
        return self._call(c, Flow.transform, self._check_points(c, z))

    def inverse(self, c: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The base point z0 with transform(c, z0) = y (M, N, D), and Σ ln|det ∂z0/∂y| (M, N)."""
        return self._call(c, Flow.inverse, self._check_points(c, y))

    @torch.no_grad()
    def log_prob(self, c: Tensor, y: Tensor, chunk: int = 65536) -> Tensor:
        """ln q(y_mn | c_m) (M, N), exact at any point: y inverted to z0 through the layers,
        ln q = ln q0(z0) + ln|det ∂z0/∂y|. y (M, N, D), or (N, D) for the same points under every
        c. Compute in float64 for 1e-6 accuracy."""
        if y.dim() == 2:
            y = y.expand(len(c), *y.shape)
        y = self._check_points(c, y)
        parts = [
            self._call(c, _log_prob_all, y[:, i : i + chunk]) for i in range(0, y.shape[1], chunk)
        ]
        return torch.cat(parts, dim=1) if parts else y.new_zeros(len(c), 0)

    def at(self, c: Tensor) -> Flow:
        """q(·|c) for one input c (C,) as a plain ``Flow`` (restarts 1): ψ(c) and the fixed
        buffers copied in, detached, so that everything nfcli does with a fitted flow (sample,
        logprob, the report, the plots) works on it unchanged."""
        params = self.parameters_at(c.reshape(1, -1))
        state = {name: p.detach().clone() for name, p in params.items()}
        state |= {name: self.flow.get_buffer(name).clone() for name in self._fixed}
        with torch.random.fork_rng(devices=[]):  # the throwaway init leaves the RNG as it was
            flow = Flow(self.dim, self.architecture, restarts=1)
        bias = self.net[-1].bias
        flow = flow.to(device=bias.device, dtype=bias.dtype)
        flow.load_state_dict(state)
        return flow

    @torch.no_grad()
    def start_at(self, mean: Tensor, covariance: Tensor) -> None:
        """Set the flow's last transform, a fixed affine y = Lz + m (architecture with start
        "mode"), to N(``mean``, ``covariance``) for every c (``Flow.start_at``)."""
        self.flow.start_at(mean, covariance)

    def _check_points(self, c: Tensor, y: Tensor) -> Tensor:
        if y.dim() != 3 or y.shape[0] != len(c) or y.shape[2] != self.dim:
            raise ValueError(
                f"points must have shape (M, N, {self.dim}) with M = {len(c)}, the number of "
                f"inputs; got {tuple(y.shape)}"
            )
        return y


class ConditionalFlow(AmortisedFlow):
    """q(z | c) (Rezende & Mohamed 2015 §4 amortisation / hypernetworks, Ha et al. 2016): the flow
    of ``architecture`` whose every parameter is h_φ(c), an MLP of the standardised condition
    (see the module docstring): an ``AmortisedFlow`` whose input is c.

    ``lo``, ``hi``: the trained range of each of the C condition variables (buffers); the MLP sees
    (c − mid)/half-width, in [−1, 1] on that range. ``hidden``: the MLP's hidden layer sizes
    (none: ψ is affine in c). ``spec()`` with the state dict rebuilds the module (``from_spec``).

    Shapes: c (M, C), one condition per row; samples and points (M, N, D), row m under c_m.
    """

    def __init__(
        self,
        dim: int,
        architecture: dict[str, Any],
        lo: Sequence[float],
        hi: Sequence[float],
        hidden: Sequence[int] = (64, 64),
    ) -> None:
        lo, hi = [float(v) for v in lo], [float(v) for v in hi]
        _check_range(lo, hi)
        super().__init__(dim, architecture, len(lo), hidden)
        self.conditions = len(lo)
        self.register_buffer("lo", torch.tensor(lo))
        self.register_buffer("hi", torch.tensor(hi))

    def features(self, c: Tensor) -> Tensor:
        """x = (c − mid)/half ∈ [−1, 1]^C on the trained range, for c (M, C)."""
        c = self._check_conditions(c)
        return (c - (self.lo + self.hi) / 2) / ((self.hi - self.lo) / 2)

    # --- rebuilding -------------------------------------------------------------------------

    def spec(self) -> dict[str, Any]:
        """Plain values that rebuild this module (``from_spec``), for checkpoints; the learnt
        values are in ``state_dict()``."""
        return {
            "dim": self.dim,
            "architecture": copy.deepcopy(self.architecture),
            "lo": self.lo.tolist(),
            "hi": self.hi.tolist(),
            "hidden": list(self.hidden),
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> ConditionalFlow:
        """The module ``spec()`` describes, freshly initialised: load its ``state_dict`` next."""
        return cls(spec["dim"], spec["architecture"], spec["lo"], spec["hi"], spec["hidden"])

    # --- checks -------------------------------------------------------------------------------

    def _check_conditions(self, c: Tensor) -> Tensor:
        if c.dim() != 2 or c.shape[1] != self.conditions:
            raise ValueError(
                f"conditions must have shape (M, {self.conditions}), one row per condition; "
                f"got {tuple(c.shape)}"
            )
        return c.to(self.lo)


def _log_prob_all(flow: Flow, y: Tensor) -> Tensor:
    """ln q(y) (R, N) of each of a flow's R flows at y (R, N, D), by the inverse."""
    z0, log_det = flow.inverse(y)
    return flow.base.log_prob(z0) + log_det


def _parameters_to_buffers(module: nn.Module) -> None:
    """Turn every parameter of ``module`` (and its submodules) into a non-persistent buffer of the
    same name: the template's values are placeholders that ``functional_call`` replaces, so they
    are neither learnt (``parameters()``) nor stored (``state_dict()``), but still follow
    ``.to()`` and ``.double()``."""
    for sub in module.modules():
        for name in list(sub._parameters):
            p = sub._parameters.pop(name)
            sub.register_buffer(name, None if p is None else p.detach(), persistent=False)


def _check_range(lo: list[float], hi: list[float]) -> None:
    if not lo or len(lo) != len(hi):
        raise NfcliError(
            f"A conditional flow needs a range lo..hi for each condition variable, the same "
            f"number of each; got {len(lo)} lower and {len(hi)} upper bounds. Give one range per "
            "condition variable."
        )
    bad = [i for i, (a, b) in enumerate(zip(lo, hi, strict=True)) if not a < b]
    bad += [i for i, (a, b) in enumerate(zip(lo, hi, strict=True)) if not math.isfinite(b - a)]
    if bad:
        i = bad[0]
        raise NfcliError(
            f"Condition variable {i + 1}'s range {lo[i]}..{hi[i]} is not a finite interval with "
            "lo < hi: the flow standardises each condition by its range's midpoint and half-width. "
            "Give finite bounds with lo below hi."
        )
