"""Training and evaluating a VAE with a flow posterior (``nfcli.vae``) on binary images.

Each update takes a mini-batch of ``batch`` training images (each epoch a fresh random order),
binarised afresh (dynamic binarisation, x ~ Bernoulli(grey level); ``binarize="fixed"``: once,
before training) and minimises the annealed free energy with one draw of q(·|x) per image,

    F_β = (1/B) Σ_b [ln q(z_b | x_b) − β_t (ln p(x_b | z_b) + ln p(z_b))],
    β_t = min(1, 0.01 + t/anneal)   (the paper's schedule, anneal = 10,000 updates; by default
                                     2/3 of the updates, at most 10,000: ``VaeConfig.resolve``),

with Adam (the CPU budget) or the paper's RMSprop (lr 1e-5, momentum 0.9, 500,000 updates). After
every epoch the validation bound (the mean ELBO of the validation images, one draw each, on one
fixed binarisation) is recorded beside the epoch's mean training ELBO. The test log-likelihood
is ``evaluate``: ln p(x) by importance sampling with S draws per test image (``VAE``), its mean
and standard error over the images.

A fit is reproducible and resumable exactly: the data order of epoch e and the binarisation of
update t come from generators seeded by (seed, e) and (seed, t), and ``VaeTrainingState`` holds
the rest (the model, the optimiser, torch's random state, the history).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch
from torch import Tensor

from nfcli.errors import NfcliError
from nfcli.resume import PlainState, get_rng, set_rng
from nfcli.train import beta_schedule
from nfcli.vae.data import ImageData, binarize, fixed_binarization
from nfcli.vae.model import VAE, VAE_FLOWS, VaeSpec

OPTIMIZERS = ("adam", "rmsprop")
BINARIZATIONS = ("dynamic", "fixed")
# --budget: "cpu" fits a model on 2 cores in well under an hour (README, "A VAE on MNIST");
# "paper" is the paper's optimiser and 500,000 updates, for a GPU.
BUDGETS: dict[str, dict[str, Any]] = {
    "cpu": {"updates": 15_000, "optimizer": "adam", "lr": 1e-3},
    "paper": {"updates": 500_000, "optimizer": "rmsprop", "lr": 1e-5, "momentum": 0.9},
}


PAPER_ANNEAL = 10_000  # the paper's β schedule, in updates
# β's share of the updates when --anneal is not given: the "cpu" budget's 10,000 of 15,000, so
# that a shorter run still ends with a third of its updates on the true bound (β = 1)
ANNEAL_SHARE = 2 / 3
BETA0 = 0.01  # β at the first update


@dataclass
class VaeConfig:
    """How a VAE is trained (stored in its checkpoint). The defaults are the paper's model (40
    latents, 400-unit layers, batch 100, β over 10,000 updates) at the "cpu" budget.

    ``anneal`` None (the default) is ``resolve``d to 2/3 of ``updates``, at most the paper's
    10,000 (10,000 at both budgets): a fixed 10,000 with --updates 2,000 left β at 0.21, and the
    model, trained on another objective, reconstructed every image as the same blurred mean."""

    flow: str = "planar"
    K: int = 10
    latent: int = 40
    hidden: tuple[int, ...] = (400, 400)
    updates: int = BUDGETS["cpu"]["updates"]
    batch: int = 100
    optimizer: str = "adam"
    lr: float = BUDGETS["cpu"]["lr"]
    momentum: float = 0.9  # RMSprop's (the paper's); Adam ignores it
    anneal: int | None = None  # updates of β from 0.01 to 1 (0: β = 1); None: see ``resolve``
    binarize: str = "dynamic"
    seed: int = 0

    def resolve(self) -> VaeConfig:
        """The config as trained: ``anneal`` filled in when it is None (2/3 of the updates, at
        most ``PAPER_ANNEAL``)."""
        if self.anneal is not None:
            return self
        return replace(self, anneal=min(PAPER_ANNEAL, round(ANNEAL_SHARE * self.updates)))

    def final_beta(self, done: int | None = None) -> float:
        """β at the last of ``done`` updates (default: all of them), as ``beta_schedule`` has it."""
        anneal = self.resolve().anneal or 0
        n = self.updates if done is None else done
        return float(beta_schedule(max(n - 1, 0), anneal, BETA0))

    def spec(self, pixels: int) -> VaeSpec:
        return VaeSpec(pixels, self.latent, tuple(self.hidden), self.flow, self.K)

    def validate(self) -> None:
        """Refuse what cannot be trained, in one paragraph, before any work."""
        checks = [
            (
                self.flow in VAE_FLOWS,
                f"--flow {self.flow}: a VAE's posterior takes {' or '.join(VAE_FLOWS)} layers, "
                "whose few parameters per latent the encoder produces for each image (a "
                "coupling layer's network would be thousands of outputs per layer)",
            ),
            (self.K >= 0, f"--K {self.K}: the flow's layers, 0 (no flow) or more"),
            (self.latent >= 1, f"--latent {self.latent}: at least 1 latent variable"),
            (
                len(self.hidden) >= 1 and all(h >= 1 for h in self.hidden),
                f"--hidden {','.join(map(str, self.hidden))}: one or more positive sizes",
            ),
            (self.updates >= 1, f"--updates {self.updates}: at least 1"),
            (self.batch >= 1, f"--batch {self.batch}: at least 1 image per update"),
            (self.optimizer in OPTIMIZERS, f"optimizer {self.optimizer}: adam or rmsprop"),
            (self.lr > 0 and math.isfinite(self.lr), f"--lr {self.lr}: a positive number"),
            (0 <= self.momentum < 1, f"momentum {self.momentum}: in [0, 1)"),
            (
                self.anneal is None or self.anneal >= 0,
                f"--anneal {self.anneal}: 0 or more updates",
            ),
            (
                self.binarize in BINARIZATIONS,
                f"--binarize {self.binarize}: dynamic (a fresh Bernoulli draw of every image at "
                "every update, the default) or fixed (one draw, before training)",
            ),
        ]
        bad = [why for ok, why in checks if not ok]
        if not bad and self.final_beta() < 1:
            need = max(1, self.updates * 2 // 3)
            raise NfcliError(
                f"--anneal {self.anneal} with --updates {self.updates}: β, the weight of "
                f"ln p(x|z) + ln p(z) in the loss, rises from {BETA0} to 1 over --anneal updates, "
                f"so it would end at {self.final_beta():.2f} and the model would be trained for "
                "another objective than the ELBO (every reconstruction the same blurred mean "
                "image). Leave --anneal out (it is then 2/3 of --updates, at most 10,000), or "
                f"give one β can finish, e.g. --anneal {need}."
            )
        if bad:
            raise NfcliError(
                "Cannot train this VAE: "
                + "; ".join(bad)
                + ". Fix the option"
                + ("s" if len(bad) > 1 else "")
                + " and run again (nfcli vae --help lists them with their defaults)."
            )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VaeConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        values["hidden"] = tuple(values.get("hidden", (400, 400)))
        return cls(**values)


def with_budget(config: VaeConfig, budget: str) -> VaeConfig:
    """``config`` with the updates, optimiser and learning rate of a BUDGETS entry."""
    if budget not in BUDGETS:
        raise NfcliError(
            f"--budget {budget}: choose {' or '.join(BUDGETS)} (cpu: "
            f"{BUDGETS['cpu']['updates']:,} Adam updates, for 2 cores; paper: the paper's "
            f"{BUDGETS['paper']['updates']:,} RMSprop updates, for a GPU)."
        )
    return replace(config, **BUDGETS[budget])


@dataclass
class VaeHistory:
    """Per epoch (one pass over the training images, the last possibly partial): updates done at
    its end, its mean training ELBO (one draw per image, at β = 1), the validation bound, and the
    wall time so far."""

    updates: list[int] = field(default_factory=list)
    train_elbo: list[float] = field(default_factory=list)
    valid_elbo: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, list]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, list]) -> VaeHistory:
        return cls(**{f.name: list(d[f.name]) for f in fields(cls)})


@dataclass
class VaeTrainingState(PlainState):
    """What ``fit_vae(..., resume=state)`` needs to go on exactly where a fit stopped."""

    step: int
    model: dict[str, Tensor]
    optimizer: dict[str, Any]
    rng: dict[str, Tensor]
    epoch_elbo: list[float]  # the current epoch's per-update training ELBOs so far
    seconds: float


@dataclass
class VaeFitResult:
    model: VAE
    config: VaeConfig
    history: VaeHistory
    steps: int
    seconds: float
    stopped: str | None = None  # None, or "interrupted"
    state: VaeTrainingState | None = None


Progress = Callable[[int, float, int], None]  # (updates done, recent training ELBO, planned)


def _generator(seed: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + index)


def _optimizer(model: VAE, config: VaeConfig) -> torch.optim.Optimizer:
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(model.parameters(), lr=config.lr, momentum=config.momentum)
    return torch.optim.Adam(model.parameters(), lr=config.lr)


def fit_vae(
    data: ImageData,
    config: VaeConfig,
    progress: Progress | None = None,
    stop: Callable[[], bool] | None = None,
    resume: VaeTrainingState | None = None,
    history: VaeHistory | None = None,
    device: str | torch.device = "cpu",
) -> VaeFitResult:
    """Train a VAE of ``config`` on ``data`` for ``config.updates`` updates (see the module
    docstring); ``progress`` every 1% of them, ``stop()`` polled after each. ``resume`` (with the
    ``history`` so far) goes on from a stopped or finished fit exactly as one run would. It runs
    on ``device`` (the images are binarised on the CPU, so a seed draws the same ones anywhere);
    the returned model is on the CPU. ``config`` is ``resolve``d first (the result's is that)."""
    config = config.resolve()
    config.validate()
    if resume is not None and resume.step > config.updates:
        raise NfcliError(
            f"The VAE to resume has done {resume.step} updates already; ask for more "
            f"(--updates {resume.step + max(1, resume.step // 2)}) to continue it."
        )
    if len(data.train) < config.batch:
        raise NfcliError(
            f"The training set has {len(data.train)} images, fewer than one batch of "
            f"{config.batch}. Lower --batch or give more images."
        )
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        return _fit(data, config, progress, stop, resume, history or VaeHistory(), device)


def _fit(
    data: ImageData,
    config: VaeConfig,
    progress: Progress | None,
    stop: Callable[[], bool] | None,
    resume: VaeTrainingState | None,
    history: VaeHistory,
    device: torch.device,
) -> VaeFitResult:
    model = VAE(config.spec(data.pixels)).to(device)
    opt = _optimizer(model, config)
    train = data.train
    if config.binarize == "fixed":
        train = fixed_binarization(data, config.seed).train
    valid = binarize(data.valid, _generator(config.seed, -1)).to(device)  # one draw, every epoch
    per_epoch = len(train) // config.batch
    start_step, before, epoch_elbo = 0, 0.0, []
    if resume is not None:
        model.load_state_dict(resume.model)
        opt.load_state_dict(resume.optimizer)
        set_rng(resume.rng, device)
        start_step, before, epoch_elbo = resume.step, resume.seconds, list(resume.epoch_elbo)
    every = max(config.updates // 100, 1)
    stopped, t, start = None, start_step - 1, time.perf_counter()
    order = torch.empty(0, dtype=torch.long)
    for t in range(start_step, config.updates):
        epoch, i = divmod(t, per_epoch)
        if i == 0 or len(order) == 0:
            order = torch.randperm(len(train), generator=_generator(config.seed, epoch))
        x = train[order[i * config.batch : (i + 1) * config.batch]]
        x = binarize(x, _generator(config.seed, t)) if config.binarize == "dynamic" else x
        x = x.to(device, non_blocking=True)
        log_joint, log_q = model.log_weights(x, 1)
        beta = beta_schedule(t, config.anneal, BETA0)
        loss = (log_q - beta * log_joint).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if bool(loss.isfinite()):
            opt.step()
        epoch_elbo.append(float((log_joint - log_q).detach().mean()))
        if progress is not None and ((t + 1) % every == 0 or t + 1 == config.updates):
            progress(t + 1, sum(epoch_elbo[-every:]) / len(epoch_elbo[-every:]), config.updates)
        if i == per_epoch - 1 or t + 1 == config.updates:
            history.updates.append(t + 1)
            history.train_elbo.append(sum(epoch_elbo) / len(epoch_elbo))
            history.valid_elbo.append(_mean_elbo(model, valid))
            history.seconds.append(before + time.perf_counter() - start)
            epoch_elbo = []
        if stop is not None and stop():
            stopped = "interrupted"
            break
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the clock must not stop before the GPU does
    seconds = before + time.perf_counter() - start
    steps = t + 1
    state = VaeTrainingState(
        steps,
        {k: v.detach().clone() for k, v in model.state_dict().items()},
        opt.state_dict(),
        get_rng(device),
        epoch_elbo,
        seconds,
    )
    model = model.to("cpu").eval()
    return VaeFitResult(model, config, history, steps, seconds, stopped, state)


@torch.no_grad()
def _mean_elbo(model: VAE, x: Tensor, chunk: int = 1000) -> float:
    """The mean over images x (M, P) of the ELBO from one draw each."""
    total = sum(float(model.elbo(x[i : i + chunk]).sum()) for i in range(0, len(x), chunk))
    return total / len(x)


@dataclass
class VaeEvaluation:
    """The test log-likelihood: −ln p(x) by importance sampling (``samples`` draws of q(·|x)
    per image), its mean over ``images`` test images and the standard error of that mean
    (the images' spread / √images), the mean −ELBO of the same draws' first, and the time."""

    nll: float
    nll_se: float
    neg_elbo: float
    samples: int
    images: int
    seconds: float
    binarize_seed: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VaeEvaluation:
        return cls(**{f.name: d[f.name] for f in fields(cls)})


@torch.no_grad()
def evaluate(
    model: VAE,
    images: Tensor,
    samples: int = 200,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    chunk: int = 100,
    device: str | torch.device = "cpu",
) -> VaeEvaluation:
    """−ln p(x) of the test ``images`` (N, P) by importance sampling with ``samples`` draws each
    (see ``VAE.log_likelihood``), on one binarisation of them seeded by ``seed`` (binary images
    are their own); ``progress(done, N)`` after each chunk of images; on ``device`` (the model is
    left where it was)."""
    if samples < 1:
        raise NfcliError(f"--samples {samples}: at least 1 draw of q(·|x) per test image.")
    t0 = time.perf_counter()
    device = torch.device(device)
    home = next(model.parameters()).device
    model = model.to(device).eval()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        x = binarize(images, _generator(seed, -2))
        lls, elbos = [], []
        for i in range(0, len(x), chunk):
            part = x[i : i + chunk].to(device)
            lls.append(model.log_likelihood(part, samples).cpu())
            elbos.append(model.elbo(part).cpu())
            if progress is not None:
                progress(min(i + chunk, len(x)), len(x))
    model.to(home)
    ll, elbo = torch.cat(lls).double(), torch.cat(elbos).double()
    se = float(ll.std() / math.sqrt(len(ll))) if len(ll) > 1 else math.nan
    return VaeEvaluation(
        float(-ll.mean()), se, float(-elbo.mean()), samples, len(ll), time.perf_counter() - t0, seed
    )
