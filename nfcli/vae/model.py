"""A deep latent Gaussian model (a variational autoencoder) whose approximate posterior q(z | x)
is a normalizing flow amortised by the encoder: the paper's MNIST experiment (Rezende & Mohamed
2015, arXiv 1505.05770, §6.2 and Table 2).

    p(z) = N(0, I_L),   p(x | z) = Π_p Bernoulli(x_p; σ(f_θ(z)_p)),
    q(z | x) = the flow of ``architecture`` on L latents, every parameter ψ = h_φ(x)
              (``nfcli.conditional.AmortisedFlow``: the same transforms and bases as ``nfcli fit``),

with f_θ (the decoder) and h_φ (the encoder) MLPs of ``hidden`` units. K = 0 is the paper's
diagonal Gaussian posterior N(μ(x), diag σ(x)²), the flow's base alone. For a draw z ~ q(·|x)

    ln w(x, z) = ln p(x | z) + ln p(z) − ln q(z | x),

whose mean is the ELBO ≤ ln p(x). Training minimises the paper's annealed free energy
F_β(x) = E_q[ln q(z | x) − β_t (ln p(x | z) + ln p(z))], β_t = min(1, 0.01 + t/anneal), and the
test log-likelihood is estimated by importance sampling with q as the proposal (Burda et al. 2016):

    ln p(x) ≈ logsumexp_s ln w(x, z_s) − ln S,   z_1 … z_S ~ q(·|x),

a lower bound in expectation that tightens as S grows (the paper's S = 200).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812 (torch's own name)

from nfcli.conditional import AmortisedFlow, mlp
from nfcli.errors import NfcliError
from nfcli.flows import architecture as flow_architecture

VAE_FLOWS = ("planar", "radial")  # layers with a few parameters per latent, amortisable per image
# The encoder's outputs for the flow's layers (not q0's mean and scale) move at this fraction of
# the learning rate (``RowScaledLinear``): on MNIST at Adam lr 1e-3, K = 40 planar layers at the
# full rate diverged within 4 epochs (validation bound −818 → −10,121), as the hypernetwork of a
# conditional fit did (``nfcli.train_conditional.OUTPUT_LR_SCALE``).
FLOW_OUTPUT_SCALE = 0.1
LOG_2PI = math.log(2 * math.pi)


def posterior_architecture(flow: str, K: int, init_scale: float = 0.25) -> dict[str, Any]:
    """The spec of q(z | x): a diagonal Gaussian base (μ, σ from the encoder; N(0, I) at first),
    then K ``flow`` layers (none for K = 0: the paper's diagonal Gaussian posterior)."""
    if flow not in VAE_FLOWS:
        raise NfcliError(
            f"--flow {flow}: a VAE's posterior takes {' or '.join(VAE_FLOWS)} layers, whose few "
            "parameters per latent the encoder produces for each image (a coupling layer's "
            "network would be thousands of outputs per layer). Use --flow planar (the paper's)."
        )
    if K < 0:
        raise NfcliError(f"--K {K}: the number of flow layers is 0 (no flow) or more.")
    spec = flow_architecture(flow, max(K, 1), init_scale, base_scale=1.0)
    return spec if K else {"base": spec["base"], "transforms": []}


@dataclass(frozen=True)
class VaeSpec:
    """What a VAE is built from (stored in its checkpoint): P pixels, L latents, the MLPs'
    hidden sizes, the posterior's flow type and K."""

    pixels: int
    latent: int = 40
    hidden: tuple[int, ...] = (400, 400)
    flow: str = "planar"
    K: int = 10

    def to_dict(self) -> dict[str, Any]:
        return {
            "pixels": self.pixels,
            "latent": self.latent,
            "hidden": list(self.hidden),
            "flow": self.flow,
            "K": self.K,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VaeSpec:
        return cls(d["pixels"], d["latent"], tuple(d["hidden"]), d["flow"], d["K"])


class RowScaledLinear(nn.Linear):
    """y = b + (s ⊙ W) x: a linear layer whose output row i has its weights multiplied by a fixed
    s_i. Adam's steps on W are about lr whatever the gradient's scale, so row i moves at s_i × lr:
    a per-output learning rate without a parameter group per row. Shapes: x (…, in) → (…, out)."""

    def __init__(self, layer: nn.Linear, scale: Tensor) -> None:
        super().__init__(layer.in_features, layer.out_features)
        with torch.no_grad():
            self.weight.copy_(layer.weight / scale[:, None])
            self.bias.copy_(layer.bias)
        self.register_buffer("scale", scale.clone())

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.scale[:, None], self.bias)


class VAE(nn.Module):
    """The model of the module docstring. ``encoder``: an ``AmortisedFlow`` of the image x (M, P)
    giving q(z | x) on L latents; ``decoder``: an MLP z (…, L) → Bernoulli logits (…, P). ELU
    between hidden layers of both (the seed work's; smooth, unlike the ReLU)."""

    def __init__(self, spec: VaeSpec) -> None:
        super().__init__()
        self.spec = spec
        arch = posterior_architecture(spec.flow, spec.K)
        self.encoder = AmortisedFlow(spec.latent, arch, spec.pixels, spec.hidden, nn.ELU)
        with torch.no_grad():  # a random start for the encoder's last layer too: the decoder
            self.encoder.net[-1].weight.normal_(0.0, 1e-3)  # learns from distinct codes at once
        scale = torch.cat(
            [
                torch.full((size,), 1.0 if name.startswith("base.") else FLOW_OUTPUT_SCALE)
                for name, size in zip(self.encoder._names, self.encoder._sizes, strict=True)
            ]
        )
        self.encoder.net[-1] = RowScaledLinear(self.encoder.net[-1], scale)
        self.decoder = mlp([spec.latent, *reversed(spec.hidden), spec.pixels], nn.ELU)

    def log_weights(self, x: Tensor, n: int) -> tuple[Tensor, Tensor]:
        """n draws of q(·|x_m) for each image x (M, P) with values in {0, 1}: ln p(x, z) (M, n)
        and ln q(z | x) (M, n), differentiable (reparametrised); ln w = their difference."""
        z, log_q = self.encoder.rsample(x, n)
        return self.log_joint(x, z), log_q

    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        """ln p(x | z) + ln p(z) for images x (M, P) and latents z (M, n, L): (M, n)."""
        logits = self.decoder(z)
        target = x.unsqueeze(1).expand_as(logits)
        log_px = -F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1)
        log_pz = -0.5 * (z * z).sum(-1) - 0.5 * z.shape[-1] * LOG_2PI
        return log_px + log_pz

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, samples: int = 200, chunk: int = 50) -> Tensor:
        """The importance-sampling estimate of ln p(x_m) for each image x (M, P), with S =
        ``samples`` draws of q(·|x_m) (in chunks of ``chunk`` draws): (M,)."""
        parts = []
        for i in range(0, samples, chunk):
            log_joint, log_q = self.log_weights(x, min(chunk, samples - i))
            parts.append(log_joint - log_q)
        log_w = torch.cat(parts, dim=1)
        return torch.logsumexp(log_w, dim=1) - math.log(samples)

    @torch.no_grad()
    def elbo(self, x: Tensor, samples: int = 1) -> Tensor:
        """The ELBO E_q[ln w] of each image (M, P), from ``samples`` draws each: (M,)."""
        log_joint, log_q = self.log_weights(x, samples)
        return (log_joint - log_q).mean(dim=1)

    @torch.no_grad()
    def generate(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """The decoder's Bernoulli means σ(f_θ(z)) at n draws z of the prior: (n, P)."""
        ref = self.decoder[0].weight
        z = torch.randn(n, self.spec.latent, generator=generator, dtype=ref.dtype)
        return torch.sigmoid(self.decoder(z.to(ref.device))).cpu()

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """σ(f_θ(z)) at one draw z ~ q(·|x) per image x (M, P): (M, P)."""
        z, _ = self.encoder.rsample(x, 1)
        return torch.sigmoid(self.decoder(z[:, 0]))
