"""A VAE with a flow posterior, end to end, as library calls (``nfcli vae`` and ``nfcli vae-eval``
are thin layers over them): train, evaluate the test −ln p(x), write the checkpoint, metrics.json
and the figures; and the paper's Table 2 as one call over several K (``run_vae_table``).

A folder of one model holds model.pt, metrics.json, curves.png (training ELBO and validation
bound per epoch), samples.png (the decoder's means at draws of the prior) and
reconstructions.png (test images above their reconstructions). A table's folder holds one such
folder per K (``K0``, ``K10``, …), summary.csv and nll.png (−ln p(x) against K).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from nfcli.checkpoint import VaeCheckpoint, save_vae_checkpoint, versions
from nfcli.errors import NfcliError
from nfcli.io import atomic_write
from nfcli.plots import save_figure
from nfcli.run import check_output
from nfcli.vae.data import ImageData, binarize
from nfcli.vae.figures import curves_figure, grid_figure, nll_figure, reconstruction_figure
from nfcli.vae.train import (
    Progress,
    VaeConfig,
    VaeEvaluation,
    VaeHistory,
    VaeTrainingState,
    evaluate,
    fit_vae,
)

EVAL_SAMPLES = 200  # the paper's importance samples per test image
GRID_IMAGES = 50  # images in samples.png and test images in reconstructions.png


@dataclass
class VaeRun:
    """One trained (and, unless stopped, evaluated) VAE and where it was written."""

    checkpoint: VaeCheckpoint
    folder: Path
    stopped: str | None


def data_record(data: ImageData, spec: str, seed: int) -> dict[str, Any]:
    """What a checkpoint says of its training data: ``spec`` and ``seed`` load it again
    (``nfcli.vae.data.load_images``)."""
    return {
        "spec": spec,
        "seed": seed,
        "name": data.name,
        "source": data.source,
        "shape": list(data.shape),
        "binary": bool(data.binary),
    }


def run_vae(
    data: ImageData,
    config: VaeConfig,
    output: str | Path,
    force: bool = False,
    progress: Progress | None = None,
    stop: Callable[[], bool] | None = None,
    samples: int = EVAL_SAMPLES,
    test_images: int | None = None,
    eval_progress: Callable[[int, int], None] | None = None,
    resume: VaeCheckpoint | None = None,
    data_spec: str | None = None,
    device: str | torch.device = "cpu",
) -> VaeRun:
    """Train a VAE of ``config`` on ``data`` (``fit_vae``; ``resume``: a checkpoint to go on
    from, to ``config.updates``), then, unless stopped, evaluate −ln p(x) on the first
    ``test_images`` test images (all by default) with ``samples`` draws each, and write the
    folder's files (see the module docstring). ``data_spec``: what ``load_images`` was given
    (stored, so that nfcli vae-eval and --resume load the same images; default the data's name).
    ``device``: where it trains and is evaluated (the files are written from the CPU)."""
    config.validate()
    check_evaluation(samples, test_images)
    out = check_output(Path(output), force)
    state: VaeTrainingState | None = resume.training if resume is not None else None
    history = VaeHistory.from_dict(resume.history.to_dict()) if resume is not None else None
    result = fit_vae(data, config, progress, stop, state, history, device)
    evaluation = None
    if result.stopped is None:
        test = data.test[:test_images] if test_images is not None else data.test
        evaluation = evaluate(
            result.model, test, samples, config.seed, eval_progress, device=device
        )
    ckpt = VaeCheckpoint(
        result.model,
        result.config,
        data_record(data, data_spec or data.name, config.seed),
        result.history,
        evaluation,
        versions(),
        result.state,
    )
    write_vae(ckpt, data, out)
    return VaeRun(ckpt, out, result.stopped)


def check_evaluation(samples: int, test_images: int | None) -> None:
    """Refuse an evaluation that cannot be made, in one paragraph, before any training."""
    if samples < 1 or (test_images is not None and test_images < 1):
        raise NfcliError(
            f"--samples {samples}"
            + (f" --test-images {test_images}" if test_images is not None else "")
            + ": the test −ln p(x) needs at least 1 draw of q(·|x) per image and at least 1 "
            "test image (the paper's: --samples 200 on all 10,000). Give positive numbers."
        )


def write_vae(ckpt: VaeCheckpoint, data: ImageData, out: Path) -> list[Path]:
    """model.pt, metrics.json and the three figures of a VAE in ``out``; returns the paths."""
    save_vae_checkpoint(out / "model.pt", ckpt)
    write_vae_metrics(out / "metrics.json", ckpt)
    cfg = ckpt.config
    what = f"{data.name}: VAE, {cfg.latent} latents, " + (
        f"{cfg.flow} flow K = {cfg.K}" if cfg.K else "diagonal Gaussian posterior (K = 0)"
    )
    h = ckpt.history
    paths = [out / "model.pt", out / "metrics.json"]
    if h.updates:
        fig = curves_figure(h, what, cfg.anneal)
        paths.append(save_figure(fig, out / "curves.png"))
    g = torch.Generator().manual_seed(cfg.seed)
    drawn = ckpt.model.generate(GRID_IMAGES, g)
    paths.append(
        save_figure(grid_figure(drawn, data.shape, what + ": samples"), out / "samples.png")
    )
    x = binarize(data.test[: GRID_IMAGES // 2], g)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        recon = ckpt.model.reconstruct(x)
    fig = reconstruction_figure(x, recon, data.shape, what + ": test images and reconstructions")
    paths.append(save_figure(fig, out / "reconstructions.png"))
    return paths


def vae_metrics(ckpt: VaeCheckpoint) -> dict[str, Any]:
    """metrics.json's content: the config, the data, the last epoch's bounds, the evaluation."""
    h = ckpt.history
    return {
        "config": ckpt.config.to_dict(),
        "data": ckpt.data,
        "updates_done": ckpt.training.step if ckpt.training is not None else None,
        # β at the last update done: 1 once the schedule (config's anneal) has finished, below 1
        # for a model stopped before that, whose bound is not yet the ELBO
        "final_beta": ckpt.config.final_beta(ckpt.training.step if ckpt.training else None),
        "epochs": len(h.updates),
        "train_elbo": h.train_elbo[-1] if h.train_elbo else None,
        "valid_elbo": h.valid_elbo[-1] if h.valid_elbo else None,
        "train_seconds": h.seconds[-1] if h.seconds else None,
        "test": ckpt.evaluation.to_dict() if ckpt.evaluation is not None else None,
        "history": h.to_dict(),
        "versions": ckpt.versions,
    }


def write_vae_metrics(path: Path, ckpt: VaeCheckpoint) -> None:
    text = json.dumps(vae_metrics(ckpt), indent=2, allow_nan=True) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


@dataclass
class TableRow:
    K: int
    folder: Path
    evaluation: VaeEvaluation | None
    valid_elbo: float | None
    train_seconds: float | None


def table_row(k: int, run: VaeRun) -> TableRow:
    """A table's row of one trained VAE: its evaluation and its last epoch's bound and time."""
    h = run.checkpoint.history
    return TableRow(
        k,
        run.folder,
        run.checkpoint.evaluation,
        h.valid_elbo[-1] if h.valid_elbo else None,
        h.seconds[-1] if h.seconds else None,
    )


def run_vae_table(
    data: ImageData,
    config: VaeConfig,
    Ks: Sequence[int],
    output: str | Path,
    force: bool = False,
    run_one: Callable[[VaeConfig, Path], VaeRun] | None = None,
) -> list[TableRow]:
    """One VAE per K in ``Ks`` (``config`` otherwise), each in ``output``/K<k>, then summary.csv
    and nll.png in ``output``. ``run_one(config, folder)`` trains and evaluates one (default:
    ``run_vae`` with its defaults); a stopped one ends the table there."""
    out = Path(output)
    for k in Ks:  # every folder checked before any training, so none is refused after hours
        check_output(out / f"K{k}", force)
    run_one = run_one or (lambda cfg, folder: run_vae(data, cfg, folder, force))
    rows = []
    for k in Ks:
        run = run_one(replace(config, K=k), out / f"K{k}")
        rows.append(table_row(k, run))
        if run.stopped is not None:
            break
    write_table(rows, out, data.name, config)
    return rows


def write_table(rows: Sequence[TableRow], out: Path, name: str, config: VaeConfig) -> None:
    """summary.csv (one row per K) and nll.png (the evaluated ones) in ``out``."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(
        [
            "K",
            "flow",
            "test_nll",
            "test_nll_se",
            "test_neg_elbo",
            "samples",
            "test_images",
            "valid_elbo",
            "updates",
            "train_seconds",
            "folder",
        ]
    )
    for r in rows:
        ev = r.evaluation
        w.writerow(
            [
                r.K,
                config.flow if r.K else "diagonal",
                f"{ev.nll:.3f}" if ev else "",
                f"{ev.nll_se:.3f}" if ev else "",
                f"{ev.neg_elbo:.3f}" if ev else "",
                ev.samples if ev else "",
                ev.images if ev else "",
                f"{r.valid_elbo:.3f}" if r.valid_elbo is not None else "",
                config.updates,
                f"{r.train_seconds:.0f}" if r.train_seconds is not None else "",
                r.folder.name,
            ]
        )
    atomic_write(out / "summary.csv", lambda f: f.write(buf.getvalue().encode()))
    done = [r for r in rows if r.evaluation is not None]
    if done:
        fig = nll_figure(
            [r.K for r in done],
            [r.evaluation.nll for r in done],
            [r.evaluation.nll_se for r in done],
            f"{name}: test −ln p(x) against K ({config.flow}, {config.updates:,} updates)",
        )
        save_figure(fig, out / "nll.png")
