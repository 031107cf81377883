"""The ``nfcli`` command: a thin Typer layer over the library.

Progress and messages go to stderr; stdout carries only data (``sample -o -``, ``targets``).
Every NfcliError becomes one paragraph on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import inspect
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import typer.core
import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from nfcli.checkpoint import (
    Checkpoint,
    ConditionalCheckpoint,
    load_any,
    load_checkpoint,
    versions,
)
from nfcli.compare import run_compare, split_targets
from nfcli.conditional_figures import write_conditional_figures
from nfcli.conditional_metrics import ConditionalReport
from nfcli.conditional_report import (
    ConditionalSummary,
    ConditionPoint,
    conditional_verdict,
    evaluate_at,
    summarise,
)
from nfcli.conditions import ConditionalEnergy, load_conditional_energy, parse_at, parse_conditions
from nfcli.config import AUTO_FLOW, SET_BY_THE_FIT, FitConfig, extend
from nfcli.devices import generator as make_generator
from nfcli.devices import resolve_device, resolve_dtype
from nfcli.diagnostics import khat_verdict, log_prob, resample
from nfcli.energy import Energy, energy_from_source, load_energy
from nfcli.errors import NfcliError
from nfcli.figures import N_SAMPLES, FigureOptions, parse_ints, parse_window, write_figures
from nfcli.flows import DEFAULT_BINS, DEFAULT_HIDDEN, DEFAULT_K, FLOW_TYPES
from nfcli.io import atomic_write, check_sample_path, ensure_dir, load_points, save_samples
from nfcli.mcmc.chains import (
    DEFAULT_WARMUP,
    McmcSettings,
    chains_table,
    check_draws_path,
    default_method,
    run_mcmc,
    write_mcmc,
)
from nfcli.mcmc.kernels import Watch
from nfcli.mixture import is_mixture
from nfcli.report import TrustReport
from nfcli.run import check_output, run_fit
from nfcli.run_conditional import REPORT_DRAWS, check_conditional_options, run_conditional_fit
from nfcli.signals import stop_on_signals
from nfcli.summary import (
    check_summary_options,
    flow_summary_table,
    summarise_flow,
    to_csv,
    to_json,
    variables_table,
)
from nfcli.targets import FAMILIES, TARGETS
from nfcli.threads import AUTO, Work, use_threads
from nfcli.train import TrainingState, fit_work, plan
from nfcli.train_conditional import CONDITIONAL_ITERS, ConditionalTrainingState

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Fit normalizing flows (planar, radial, NICE, RealNVP, splines) to a density known up "
    "to a constant.",
)
err = Console(stderr=True)
out = Console()

F = TypeVar("F", bound=Callable[..., Any])


def _print_version(value: bool) -> None:
    if value:
        v = versions()
        typer.echo(f"nfcli {v['nfcli']} (torch {v['torch']}, python {v['python']})")
        raise typer.Exit()


@app.callback()
def _app_options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print versions and exit."
        ),
    ] = False,
) -> None:
    pass


class NfcliCommand(typer.core.TyperCommand):
    """Every command: an option it does not have gets nfcli's one-paragraph error with the closest
    option it does have (``nfcli sample MODEL --n 10``: did you mean -n?) and exit code 2, as
    ``fit``'s words after its target do (``refuse_unknown``), instead of click's bare box."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except Exception as e:  # click's NoSuchOption (typer vendors click: matched by name)
            if type(e).__name__ != "NoSuchOption":
                raise
            hint = did_you_mean(self.params, e.option_name)
            err.print(
                Text.assemble(
                    ("error: ", "bold red"),
                    f"nfcli {self.name} does not understand {e.option_name}: it is not one of "
                    f"its options{hint}. nfcli {self.name} --help lists them.",
                ),
                soft_wrap=True,
            )
            raise typer.Exit(2) from None


def did_you_mean(params: list[Any], word: str) -> str:
    """' (did you mean --seed?)' for the option of ``params`` closest to ``word``, or ''."""
    known = [
        o
        for p in params
        for o in [*getattr(p, "opts", []), *getattr(p, "secondary_opts", [])]
        if o.startswith("-")
    ]
    close = difflib.get_close_matches(word.split("=")[0], known, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


# said once, after a fit to a Python file, instead of one refusal per later command
TRUST_NOTE = (
    "note: model.pt stores the code of {path}, and nfcli runs stored code only when told to: "
    "the commands that evaluate U from it (sample --resample, summary --resample, report, plot, "
    "mcmc, fit --resume) need --trust."
)


def user_errors(fn: F) -> F:
    """Turn NfcliError into a message on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except NfcliError as e:
            err.print(Text.assemble(("error: ", "bold red"), str(e)), soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            err.print("[bold red]interrupted[/]: nothing more was written.")
            raise typer.Exit(130) from None
        except typer.Exit:
            raise
        except Exception as e:
            if os.environ.get("NFCLI_DEBUG"):
                raise
            msg = (
                f"{type(e).__name__}: {e}. This is a bug in nfcli, not in your input; run again "
                "with NFCLI_DEBUG=1 for the traceback and report it."
            )
            err.print(Text.assemble(("internal error: ", "bold red"), msg), soft_wrap=True)
            raise typer.Exit(1) from None

    wrapper.__doc__ = unwrap(fn.__doc__)
    return wrapper  # type: ignore[return-value]


def unwrap(doc: str | None) -> str | None:
    """A docstring's paragraphs each on one line: Typer's help keeps the source's line breaks,
    which the terminal then wraps a second time."""
    if doc is None:
        return None
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(" ".join(p.split()) for p in paragraphs)


# --- fit ---

RUN_KEYS = ("target", "output", "vars", "force", "device", "const", "threads", "condition")


def load_yaml(path: Path) -> dict[str, Any]:
    """Read a run configuration; its keys are the long option names of ``nfcli fit``."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise NfcliError(f"Cannot read the config file {path}: {e.strerror or e}.") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise NfcliError(
            f"The config file {path} is not valid YAML: {what}{where}. Fix its syntax; each line "
            "is option: value, e.g. K: 16."
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise NfcliError(f"The config file {path} must be a mapping of option: value lines.")
    allowed = (set(FitConfig.field_names()) - set(SET_BY_THE_FIT)) | set(RUN_KEYS)
    unknown = sorted(str(k) for k in data if k not in allowed)
    if unknown:
        raise NfcliError(
            f"The config file {path} has unknown keys: {', '.join(unknown)}. "
            f"Allowed keys: {', '.join(sorted(allowed))}."
        )
    return data


def merge_config(flags: dict[str, Any], yaml_values: dict[str, Any]) -> dict[str, Any]:
    """Flags given on the command line win over the YAML file, which wins over the defaults."""
    merged = dict(yaml_values)
    merged.update({k: v for k, v in flags.items() if v is not None})
    return merged


def make_config(values: dict[str, Any]) -> FitConfig:
    """A validated FitConfig from merged option values (YAML gives strings such as 1e-3)."""
    defaults = FitConfig(flow="spline")  # every optional field filled in, for the examples
    kwargs: dict[str, Any] = {}
    for name in FitConfig.field_names():
        if name not in values or values[name] is None or name in SET_BY_THE_FIT:
            continue
        v = values[name]
        kind = int if name in ("anneal", "K", "bins", "batch") else type(getattr(defaults, name))
        if name == "converge":
            if not isinstance(v, bool):
                raise NfcliError(
                    f"converge: {v!r} is not true or false (for example converge: true)."
                )
            kwargs[name] = v
            continue
        try:
            if name == "hidden":
                kwargs[name] = parse_hidden(v)
                continue
            if isinstance(v, bool) or (kind is int and not isinstance(v, int)):
                raise ValueError
            kwargs[name] = kind(v)
        except (TypeError, ValueError):
            example = (
                ",".join(map(str, defaults.hidden)) if name == "hidden" else getattr(defaults, name)
            )
            raise NfcliError(
                f"{name}: {v!r} is not a valid "
                f"{'list of layer sizes' if name == 'hidden' else kind.__name__} "
                f"(for example {name}: {example})."
            ) from None
    cfg = FitConfig(**kwargs)
    cfg.validate()
    return cfg


def parse_hidden(value: Any) -> list[int]:
    """--hidden 64,64 (or YAML hidden: [64, 64], or one size) as a list of whole numbers."""
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, int):
        return [value]
    parts = value if isinstance(value, list) else str(value).split(",")
    sizes = []
    for part in parts:
        if isinstance(part, (bool, float)):
            raise ValueError
        sizes.append(int(str(part).strip()))
    return sizes


def option(default: Any, *names: str, help: str) -> Any:
    """A typer option whose help ends in "(default: …)" written from ``default`` itself, the one
    style of the whole CLI (Typer's own "[default: …]" is turned off)."""
    return typer.Option(default, *names, help=f"{help} (default: {default})", show_default=False)


# Options that fit and compare share, declared once.
TargetArg = Annotated[
    str,
    typer.Argument(
        help="Energy U: an expression such as 'x**2/2 + y**2/2', a .py file, or a built-in."
    ),
]
IterOpt = Annotated[
    int | None,
    typer.Option(
        "--iters",
        help=f"Optimisation steps. (default: {FitConfig.iters}; "
        f"{CONDITIONAL_ITERS} for a conditional fit)",
    ),
]
K_HELP = (
    f"Number of flow layers. (default: {DEFAULT_K['planar']} for planar and radial, "
    f"{DEFAULT_K['nice']} for nice, realnvp and spline; affine has one layer)"
)
FLOW_HELP = (
    f"Flow type: auto, {', '.join(FLOW_TYPES)} (README, Flows). auto: planar in 1-2 dimensions, "
    f"{AUTO_FLOW} from 3 on (README, Real posteriors). (default: {FitConfig.flow})"
)
StartOpt = Annotated[
    str | None,
    typer.Option(
        "--start",
        help="Where q starts: origin (N(0, 2²), the paper's) or mode (the Gaussian at the mode of "
        "p, found by L-BFGS first; no annealing). (default: auto: origin in 1-2 dimensions, mode "
        "from 3 on)",
    ),
]
BaseOpt = Annotated[
    str | None,
    typer.Option(
        "--base",
        help="The flow's base: gaussian, or student_t (heavier tails, degrees of freedom learnt "
        "per coordinate; for targets whose tails k̂ says q misses). (default: gaussian)",
    ),
]
ConvergeOpt = Annotated[
    bool | None,
    typer.Option(
        "--converge/--no-converge",
        help="Stop once the loss has levelled off (--iters is then the most steps), or run every "
        "step. (default: auto: every step in 1-2 dimensions, --converge from 3 on)",
    ),
]
HiddenOpt = Annotated[
    str | None,
    typer.Option(
        "--hidden",
        help="Hidden layer sizes of the coupling flows' networks (nice, realnvp, spline). "
        f"(default: {','.join(map(str, DEFAULT_HIDDEN))})",
    ),
]
BinsOpt = Annotated[
    int | None,
    typer.Option("--bins", help=f"Bins of each spline (--flow spline). (default: {DEFAULT_BINS})"),
]
BatchOpt = Annotated[
    int | None,
    typer.Option(
        "--batch", help="Samples per step. (default: 1024 in 1-2 dimensions, 256 from 3 on)"
    ),
]
LrOpt = Annotated[
    float | None, typer.Option("--lr", help=f"Adam learning rate. (default: {FitConfig.lr})")
]
SeedOpt = Annotated[
    int | None, typer.Option("--seed", help=f"Random seed. (default: {FitConfig.seed})")
]
AnnealOpt = Annotated[
    int | None,
    typer.Option(
        "--anneal", help="Steps of the β schedule 0.01→1; 0 turns it off. (default: 3/8 of --iters)"
    ),
]
VarsOpt = Annotated[
    str | None, typer.Option("--vars", help="Variable order, e.g. x,y (overrides).")
]
RestartsOpt = Annotated[
    int | None,
    typer.Option("--restarts", help="Fit R flows at once and keep the best by ln Z. (default: 1)"),
]
DeviceOpt = Annotated[
    str | None,
    typer.Option("--device", help="cpu, cuda (or cuda:N) or auto (a GPU if any). (default: cpu)"),
]
DtypeOpt = Annotated[
    str | None, typer.Option("--dtype", help="float32 or float64. (default: float32)")
]
ConstOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--const",
        help="Bind a name of the expression to a number, e.g. --const nu=3 (repeatable); "
        "nu=3 after the expression does the same.",
    ),
]
CompileOpt = Annotated[
    str | None,
    typer.Option(
        "--compile-energy",
        help="torch.compile U for the training loop: auto (a Python-file U whose eager calls "
        "would cost more than compiling, ~1 min), on, or off. (default: auto)",
    ),
]
CompileFlowOpt = Annotated[
    str | None,
    typer.Option(
        "--compile-flow",
        help="torch.compile the flow's training step: auto (when the time it saves exceeds "
        "the compilation's, ~30 s, or ~3 s once cached), on, or off. (default: auto)",
    ),
]
SamplerOpt = Annotated[
    str | None,
    typer.Option(
        "--sampler",
        help="The draws written to samples.npy: auto (MCMC with the flow, 32 chains, where the "
        "verdict is not good, from 3-D on), q (the flow's own), neutra or independence. "
        "(default: auto)",
    ),
]
ThreadsOpt = Annotated[
    str | None,
    typer.Option(
        "--threads",
        help="CPU threads, or auto: OMP_NUM_THREADS if set, else 1 unless the problem is large "
        "and cores are free. (default: auto)",
    ),
]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="YAML file of options; flags win.")
]
FIGURE_FORMAT, FIGURE_DPI = "png", 120  # the defaults of --format and --dpi
FormatOpt = Annotated[
    str,
    typer.Option(
        "--format",
        help=f"Figure format: png, pdf or svg. (default: {FIGURE_FORMAT})",
        show_default=False,
    ),
]
DpiOpt = Annotated[
    int,
    typer.Option(
        "--dpi",
        help=f"Figure resolution (dots per inch). (default: {FIGURE_DPI})",
        show_default=False,
    ),
]
WindowOpt = Annotated[
    str | None,
    typer.Option(
        "--window",
        "--range",
        help="2-D extent: lo,hi for both axes or x0,x1,y0,y1 (1-D: the range), e.g. --window=-4,4.",
    ),
]


AtOpt = Annotated[
    str | None,
    typer.Option(
        "--at",
        help="For a conditional fit: the condition, e.g. --at theta=0.7 (plot and report also "
        "take a grid, e.g. --at theta=-3:3:9; several conditions: --at a=0:1:3,b=2).",
    ),
]


# An expression may begin with a minus sign ("-log(x) + x"), so unknown options are taken as the
# target or extra arguments, and ``refuse_unknown`` then names real typos such as --iter.
EXPRESSION_FIRST = {"ignore_unknown_options": True, "allow_extra_args": True}


def refuse_unknown(ctx: typer.Context, target: str | None, extra: list[str] | None = None) -> None:
    """A one-paragraph error for options the command does not have (with a close match);
    ``extra``: the words after the target still to account for (default: all of them)."""
    words = ([target] if target and target.startswith("--") else []) + list(
        ctx.args if extra is None else extra
    )
    if not words:
        return
    first = next((w for w in words if w.startswith("-")), words[0])
    hint = did_you_mean(ctx.command.params, first)
    raise NfcliError(
        f"nfcli {ctx.command.name} does not understand {' '.join(words)}: {first} is not one of "
        f"its options{hint}. nfcli {ctx.command.name} --help lists them; an expression that "
        'starts with a minus sign goes first, as in nfcli fit "-log(x) + x".'
    )


@app.command(cls=NfcliCommand, context_settings=EXPRESSION_FIRST)
@user_errors
def fit(
    ctx: typer.Context,
    target: TargetArg = None,
    K: Annotated[int | None, typer.Option("--K", help=K_HELP)] = None,
    flow: Annotated[str | None, typer.Option("--flow", help=FLOW_HELP)] = None,
    hidden: HiddenOpt = None,
    bins: BinsOpt = None,
    iters: IterOpt = None,
    batch: BatchOpt = None,
    lr: LrOpt = None,
    seed: SeedOpt = None,
    anneal: AnnealOpt = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Output folder. (default: .)")
    ] = None,
    vars: VarsOpt = None,
    restarts: RestartsOpt = None,
    start: StartOpt = None,
    converge: ConvergeOpt = None,
    base: BaseOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    compile_energy: CompileOpt = None,
    compile_flow: CompileFlowOpt = None,
    sampler: SamplerOpt = None,
    threads: ThreadsOpt = None,
    config: ConfigOpt = None,
    force: Annotated[
        bool | None, typer.Option("--force", help="Overwrite an existing model.pt.")
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            "--resume",
            help="Continue the fit in this model.pt (stopped, or for more --iters) where it "
            "stopped, as one uninterrupted run would; writes to its folder unless -o.",
        ),
    ] = None,
    trust: Annotated[
        bool,
        typer.Option("--trust", help="With --resume: run the checkpoint's stored Python energy."),
    ] = False,
    const: ConstOpt = None,
    condition: Annotated[
        list[str] | None,
        typer.Option(
            "--condition",
            help="Make a variable of the expression a condition c and fit q(z | c) for every c "
            "in LO..HI, e.g. --condition theta=-3.1416:3.1416 (repeatable). A family of targets "
            "(u1_rotated, ring_width) has its conditions by default.",
        ),
    ] = None,
) -> None:
    """Fit a flow to exp(−U) and write model.pt, samples.npy, metrics.json and figures.

    Constants of an expression are bound after it, as in nfcli fit "(nu+1)/2*log(1 + x**2/nu)"
    nu=3 (or --const nu=3). Ctrl-C or SIGTERM finishes the current step, writes everything so far
    and exits with 130; nfcli fit --resume model.pt then goes on.

    With --condition NAME=LO:HI (or a family of targets, such as u1_rotated), one conditional
    flow q(z | c) is fitted to the whole family: model.pt, metrics.json (the trust report at a grid
    of conditions) and loss.png; sample, logprob, plot and report then take --at NAME=VALUE."""
    bindings, rest = split_bindings(ctx.args)
    refuse_unknown(ctx, target, rest)
    flags = dict(
        target=target,
        K=K,
        flow=flow,
        hidden=hidden,
        bins=bins,
        iters=iters,
        batch=batch,
        lr=lr,
        seed=seed,
        anneal=anneal,
        restarts=restarts,
        start=start,
        converge=converge,
        base=base,
        dtype=dtype,
        device=device,
        compile_energy=compile_energy,
        compile_flow=compile_flow,
        sampler=sampler,
        output=output,
        vars=vars,
        force=force,
        const=parse_constants([*bindings, *(const or [])]) or None,
    )
    if resume is None:
        values = merge_config(flags, load_yaml(config) if config is not None else {})
        conditions = _condition_texts(condition, values.get("condition"))
        if conditions or str(values.get("target") or "").strip() in FAMILIES:
            _fit_conditional(values, conditions, threads)
            return
    if resume is not None:
        _refuse_kept_settings(flags, config, condition)
        stored = load_any(resume)
        where = resolve_device(str(device or "cpu"))
        if isinstance(stored, ConditionalCheckpoint):
            _resume_conditional(resume, stored, flags, trust, threads, where)
            return
        energy, cfg, state, out_dir, force = _resume_plan(resume, stored, flags, trust)
    else:
        if not values.get("target"):
            raise NfcliError(
                "No target given. Pass an expression, a .py file or a built-in name "
                "(nfcli targets lists them), e.g. nfcli fit u1, or set target: in --config."
            )
        cfg, state = make_config(values), None
        where = resolve_device(str(values.get("device") or "cpu"))
        names = _split_vars(values.get("vars"))
        constants = parse_constants(values.get("const"), "const: in the config file")
        energy = load_energy(str(values["target"]), names, constants)
        cfg.validate(energy.dim)
        force = bool(values.get("force"))
        out_dir = check_output(Path(values.get("output") or "."), force)
        if threads is None and values.get("threads") is not None:  # threads: in the YAML
            threads = str(values["threads"])
    cfg = plan(energy, cfg)
    # decided once, here (the fit keeps a count as it is); a resumed fit decides afresh
    asked = threads if threads is not None else cfg.threads if state is None else AUTO
    cfg = dataclasses.replace(cfg, threads=use_threads(asked, fit_work(cfg, energy.dim)))
    done = state.step if state is not None else 0
    with stop_on_signals() as stop, fit_progress() as progress:
        err.print(
            f"fitting {energy.label} over ({', '.join(energy.names)}), D = {energy.dim}: "
            f"{cfg.flow} K={cfg.K}, start at the {cfg.start}, "
            + (f"steps {done}→" if done else "")
            + (
                f"at most {cfg.iters} steps (stops once converged)"
                if cfg.converge
                else f"{cfg.iters} steps"
            )
            + f" on {where}; Ctrl-C stops after the current step and keeps the fit so far",
            soft_wrap=True,
        )
        bars: dict[str, Callable[..., None]] = {}

        def chains(done: int, total: int) -> None:  # a second bar, once the chains start
            if "chains" not in bars:
                bars["chains"] = progress("chains", total)
            bars["chains"](done, math.nan, 1.0, total)

        ckpt, report = run_fit(
            energy,
            cfg,
            out_dir,
            force,
            progress("fit", cfg.iters, done),
            where,
            stop,
            state,
            chains,
        )
    err.print(summary_table(report, f"{out_dir}/ model.pt samples.npy metrics.json *.png"))
    err.print(flow_summary_table(ckpt.flow, ckpt.names))
    if energy.source.get("kind") == "file" and state is None:
        err.print(TRUST_NOTE.format(path=energy.source.get("path")), soft_wrap=True)
    model = out_dir / "model.pt"
    if report.stopped == "interrupted":
        err.print(
            f"[bold yellow]{stop.name or 'interrupted'}[/]: stopped after step "
            f"{report.steps_done} of {report.iters}; wrote the fit so far to {out_dir}/. "
            f"Continue it with: nfcli fit --resume {model}",
            soft_wrap=True,
        )
        raise typer.Exit(130)
    if report.stopped is not None:
        raise NfcliError(
            f"{report.stop_message} The fit so far is in {out_dir}/ for inspection "
            "(nfcli plot shows where q went)."
        )
    if report.chains is not None and report.chains["interrupted"]:
        err.print(
            f"[bold yellow]{stop.name or 'interrupted'}[/]: the fit finished, and its chains were "
            f"stopped after {report.chains['draws_per_chain']} draws each; samples.npy holds "
            f"{'those' if report.sampler != 'q' else 'q’s own draws'}. nfcli mcmc {model} runs "
            "them in full.",
            soft_wrap=True,
        )
        raise typer.Exit(130)


def _condition_texts(flags: list[str] | None, from_yaml: Any) -> list[str]:
    """--condition values, or the config file's condition: (one NAME=LO:HI or a list)."""
    if flags:
        return list(flags)
    if from_yaml is None:
        return []
    items = [from_yaml] if isinstance(from_yaml, str) else from_yaml
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise NfcliError(
            f"condition: {from_yaml!r} in the config file must be NAME=LO:HI or a list of them, "
            "e.g. condition: theta=-3.1416:3.1416."
        )
    return items


def _fit_conditional(values: dict[str, Any], texts: list[str], threads: str | None) -> None:
    """``nfcli fit`` of a family of targets: ``run_conditional_fit``, its table, Ctrl-C → 130."""
    if not values.get("target"):
        raise NfcliError(
            "No target given. Pass an expression with --condition NAME=LO:HI, or a family of "
            f"targets ({', '.join(FAMILIES)}), e.g. nfcli fit u1_rotated."
        )
    given = {k: v for k, v in values.items() if v is not None}
    cfg = check_conditional_options(make_config({"iters": CONDITIONAL_ITERS, **given}))
    where = resolve_device(str(values.get("device") or "cpu"))
    names = _split_vars(values.get("vars"))
    constants = parse_constants(values.get("const"), "const: in the config file")
    energy = load_conditional_energy(
        str(values["target"]), parse_conditions(texts), names, constants
    )
    cfg.validate(energy.dim)
    force = bool(values.get("force"))
    out_dir = check_output(Path(values.get("output") or "."), force)
    if threads is None and values.get("threads") is not None:
        threads = str(values["threads"])
    _run_conditional(energy, cfg, out_dir, force, threads, where)


def _resume_conditional(
    model: Path,
    ckpt: ConditionalCheckpoint,
    flags: dict[str, Any],
    trust: bool,
    threads: str | None,
    where: Any,
) -> None:
    """``nfcli fit --resume MODEL`` of a conditional fit: its energy, its config extended to
    --iters (``nfcli.config.extend``), its training state, written to MODEL's folder unless -o."""
    state = ckpt.training
    if state is None:
        raise NfcliError(
            f"{model} holds no training state (written by an older nfcli, or stopped while its "
            "--restarts were still exploring), so it cannot be resumed. Start a new conditional "
            "fit; a finished or single fit of this version can be resumed."
        )
    iters = _resume_iters(model, flags["iters"], state.step, ckpt.config.iters)
    energy = _resume_conditional_energy(ckpt, flags["target"], flags["const"], trust, model)
    out_dir, force = _resume_output(model, flags)
    cfg = extend(ckpt.config, iters)
    _run_conditional(energy, cfg, out_dir, force, threads, where, state)


def _resume_conditional_energy(
    ckpt: ConditionalCheckpoint,
    target: str | None,
    constants: dict[str, float] | None,
    trust: bool,
    model: Path,
) -> ConditionalEnergy:
    """The conditional checkpoint's energy over (z, c), as ``_resume_energy`` decides for a fit
    to one target: a stored Python file runs only if given again or with --trust, and a TARGET
    given must be the family the checkpoint was fitted to."""
    source = ckpt.energy_source
    if target is None:
        return ConditionalEnergy(_stored_energy(source, trust, model), ckpt.conditions)
    energy = load_conditional_energy(target, ckpt.conditions, ckpt.names, constants)
    same = ("kind", "text", "name", "constants")
    if any(energy.energy.source.get(k) != source.get(k) for k in same):
        stored = source["name"] or source["path"] or source["text"]
        raise NfcliError(
            f"{energy.energy.label} is not the family {model} was fitted to ({source['kind']} "
            f"{stored!r}, conditions {ckpt.describe_conditions()}). Resume with the same energy, "
            "or leave TARGET out to use the checkpoint's."
        )
    return energy


def _run_conditional(
    energy: ConditionalEnergy,
    cfg: FitConfig,
    out_dir: Path,
    force: bool,
    threads: str | None,
    where: Any,
    state: ConditionalTrainingState | None = None,
) -> None:
    """``run_conditional_fit`` (from ``state`` if resuming) with a progress bar, its table, and
    Ctrl-C → the fit so far written and exit code 130."""
    cfg = cfg.resolve(energy.dim)
    asked = threads if threads is not None else cfg.threads if state is None else AUTO
    cfg = dataclasses.replace(cfg, threads=use_threads(asked, Work(cfg.batch, energy.dim)))
    ranges = ", ".join(f"{c.name} in [{c.lo:g}, {c.hi:g}]" for c in energy.conditions)
    done = state.step if state is not None else 0
    with stop_on_signals() as stop, fit_progress() as progress:
        err.print(
            f"fitting {energy.energy.label} over ({', '.join(energy.names)}), D = {energy.dim}, "
            f"for every {ranges}: {cfg.flow} K={cfg.K}, "
            + (f"steps {done}→" if done else "")
            + f"{cfg.iters} steps on {where}; Ctrl-C stops after the current step and keeps the "
            "fit so far",
            soft_wrap=True,
        )
        _, report = run_conditional_fit(
            energy,
            cfg,
            out_dir,
            force,
            progress("fit", cfg.iters, done),
            stop,
            resume=state,
            device=where,
        )
    written = f"{out_dir}/ model.pt metrics.json loss.png"
    err.print(conditional_table(report, report.points, report.summary, written))
    if report.stopped == "interrupted":
        err.print(
            f"[bold yellow]{stop.name or 'interrupted'}[/]: stopped after step "
            f"{report.steps_done} of {report.iters}; wrote the fit so far to {out_dir}/. "
            f"Continue it with: nfcli fit --resume {out_dir / 'model.pt'}",
            soft_wrap=True,
        )
        raise typer.Exit(130)


def conditional_table(
    report: ConditionalReport,
    points: list[ConditionPoint],
    summary: ConditionalSummary | None,
    written: str | None = None,
) -> Table:
    """The trust report of a conditional fit per condition (one row each), then the mean and the
    worst KL(q‖p) and the worst k̂ with where they are."""
    conds = report.conditions
    steps = (
        f"{report.steps_done} of {report.iters} ({report.stopped})"
        if report.stopped
        else (f"{report.steps_done}")
    )
    t = Table(
        title=f"nfcli conditional fit: {report.target}\n{report.flow}, K = {report.K}, "
        f"D = {report.dim} ({', '.join(report.vars)}), conditions "
        + ", ".join(f"{c.name} in [{c.lo:g}, {c.hi:g}]" for c in conds)
        + f"; {steps} steps in {report.wall_time_s:.1f} s, final loss (β = 1) "
        f"{report.final_loss_beta1:.4f}",
        title_justify="left",
    )
    for c in conds:
        t.add_column(c.name, justify="right")
    for col in ("ELBO", "KL(q‖p)", "KL(p‖q)", "TV", "ESS", "k̂"):
        t.add_column(col, justify="right")
    t.add_column("verdict")

    def num(v: float | None, fmt: str = ".4f") -> str:
        return "—" if v is None else format(v, fmt)

    for p in points:
        t.add_row(
            *(f"{v:.4g}" for v in p.c),
            num(p.elbo),
            num(p.kl_qp),
            num(p.kl_pq),
            num(p.tv),
            f"{p.ess_fraction:.1%}",
            f"{p.khat:.2f}" if math.isfinite(p.khat) else "—",
            p.verdict or "",
        )
    if summary is not None:
        blank = [""] * len(conds)
        t.add_section()
        t.add_row("mean", *blank[1:], "", num(summary.mean_kl_qp), "", "", "", "")
        if summary.worst_kl_qp is not None and summary.worst_kl_at is not None:
            at = ", ".join(f"{v:.4g}" for v in summary.worst_kl_at)
            t.add_row("worst", *blank[1:], "", num(summary.worst_kl_qp), "", "", "", f"at {at}")
        at = ", ".join(f"{v:.4g}" for v in summary.worst_khat_at)
        t.add_row("worst k̂", *blank[1:], "", "", "", "", "", f"{summary.worst_khat:.2f} at {at}")
    overall, reasons = conditional_verdict(
        points, report.condition_names, report.stopped, report.warnings
    )
    style = {"good": "bold green", "usable": "bold yellow"}.get(overall, "bold red")
    t.caption = f"[{style}]verdict: {overall.upper()}[/] — " + " ".join(reasons)
    if written:
        t.caption = (t.caption + "\n" if t.caption else "") + f"written: {written}"
    return t


RESUME_KEEPS = (
    "K",
    "flow",
    "start",
    "converge",
    "base",
    "hidden",
    "bins",
    "batch",
    "lr",
    "seed",
    "anneal",
    "restarts",
    "dtype",
    "vars",
    "compile_energy",
    "compile_flow",
)


def split_bindings(words: list[str]) -> tuple[list[str], list[str]]:
    """The words after the target that bind constants (``nu=3``), and the others."""
    bound = [w for w in words if BINDING.fullmatch(w.strip())]
    return [w.strip() for w in bound], [w for w in words if w not in bound]


BINDING = re.compile(r"[A-Za-z][A-Za-z0-9_]*=\S+")


def parse_constants(values: Any, where: str = "the command line") -> dict[str, float]:
    """``["nu=3", "s=0.5"]`` (or "nu=3,s=0.5", or YAML's {nu: 3}) → {"nu": 3.0, "s": 0.5}."""
    if values is None:
        return {}
    if isinstance(values, dict):
        items = [(str(k), v) for k, v in values.items()]
    else:
        words = [values] if isinstance(values, str) else list(values)
        parts = [p.strip() for w in words for p in str(w).split(",") if p.strip()]
        items = []
        for p in parts:
            name, eq, value = p.partition("=")
            if not eq or not name.strip():
                raise NfcliError(
                    f"{p!r} in {where} is not a constant binding: write NAME=NUMBER, e.g. nu=3."
                )
            items.append((name.strip(), value.strip()))
    constants: dict[str, float] = {}
    for name, value in items:
        try:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
        except (TypeError, ValueError):
            raise NfcliError(
                f"{name}={value} in {where}: the value of a constant must be a number, e.g. "
                f"{name}=3 or {name}=0.5."
            ) from None
        if not math.isfinite(number):
            raise NfcliError(
                f"{name}={value} in {where}: a constant must be finite, e.g. {name}=3."
            )
        if name in constants:
            raise NfcliError(f"{name} is bound twice in {where}; give each constant once.")
        constants[name] = number
    return constants


def _refuse_kept_settings(
    flags: dict[str, Any], config: Path | None, condition: list[str] | None
) -> None:
    """--resume keeps the settings a fit was started with: refuse any given with it."""
    given = [f"--{k}" for k in RESUME_KEEPS if flags[k] is not None]
    if condition:
        given.append("--condition")
    if flags["const"] is not None and flags["target"] is None:
        given.append("constants")
    if given or config is not None:
        raise NfcliError(
            f"--resume continues a fit with the settings it was started with, so "
            f"{', '.join(given) or '--config'} cannot be given with it (only --iters, -o, "
            "--force, --device and --trust can). Start a new fit to change them."
        )


def _resume_plan(
    model: Path, ckpt: Checkpoint, flags: dict[str, Any], trust: bool
) -> tuple[Energy, FitConfig, TrainingState, Path, bool]:
    """What ``fit --resume MODEL`` runs: the checkpoint's energy (or TARGET, if given, which
    must be the same), its config extended to --iters, its training state, and the folder to
    write (MODEL's unless -o; overwriting MODEL itself needs no --force)."""
    energy = _resume_energy(ckpt, flags["target"], flags["const"], trust, model)
    state = ckpt.training
    if state is None:
        raise NfcliError(
            f"{model} holds no training state (written by an older nfcli), so it cannot be "
            "resumed. Start a new fit; a checkpoint written by this version can be."
        )
    iters = flags["iters"] if flags["iters"] is not None else ckpt.config.iters
    if flags["iters"] is None and state.end is not None and state.step >= state.end:
        raise NfcliError(
            f"{model} converged at step {state.converged} and finished at step {state.step} of "
            f"at most {ckpt.config.iters}. Pass --iters N to train it longer from there, e.g. "
            f"--iters {state.step + max(1, state.step // 2)}."
        )
    _resume_iters(model, flags["iters"], state.step, iters)
    out_dir, force = _resume_output(model, flags)
    return energy, extend(ckpt.config, iters), state, out_dir, force


def _resume_iters(model: Path, given: int | None, step: int, planned: int) -> int:
    """The steps a resumed fit goes on to: --iters (``given``), else the ``planned`` steps (the
    checkpoint's); refused when that is no more than the ``step``s done."""
    iters = given if given is not None else planned
    if iters <= step:
        raise NfcliError(
            f"{model} has done {step} steps"
            + (
                f", and --iters {iters} asks for no more. Give a larger --iters"
                if given is not None
                else f", all it was asked for. Pass --iters N with N > {step} to train longer"
            )
            + f", e.g. --iters {step + max(1, step // 2)}."
        )
    return iters


def _resume_output(model: Path, flags: dict[str, Any]) -> tuple[Path, bool]:
    """The folder a resumed fit writes (MODEL's unless -o) and whether it may overwrite
    model.pt there (--force, or MODEL itself)."""
    out_dir = ensure_dir(Path(flags["output"]) if flags["output"] is not None else model.parent)
    force = bool(flags["force"]) or (out_dir / "model.pt").resolve() == model.resolve()
    return check_output(out_dir, force), force


def _resume_energy(
    ckpt: Checkpoint,
    target: str | None,
    constants: dict[str, float] | None,
    trust: bool,
    model: Path,
) -> Energy:
    """The checkpoint's energy; a stored Python file runs only if given again or with --trust.
    A TARGET given with --resume must be the energy (and constants) the checkpoint was fitted to;
    it is loaded on its own terms first, so a different one is named as such."""
    source = ckpt.energy_source
    if target is None:
        return _stored_energy(source, trust, model)
    energy = load_energy(target, None, constants, check_proper=False)
    same = ("kind", "text", "name", "constants")
    if any(energy.source[k] != source.get(k, {}) for k in same) or energy.dim != len(ckpt.names):
        stored = source["name"] or source["path"] or source["text"]
        bound = "".join(f" {k}={v:g}" for k, v in (source.get("constants") or {}).items())
        raise NfcliError(
            f"{energy.label} (D = {energy.dim}) is not the energy {model} was fitted to "
            f"({source['kind']} {stored!r}{bound}, D = {len(ckpt.names)}"
            + (", and the file has changed since" if source["kind"] == "file" else "")
            + "). Resume with the same energy, or leave TARGET out to use the checkpoint's."
        )
    if source["kind"] == "file":  # columns named as in the fit (its --vars, if any)
        names = list(ckpt.names)
        return dataclasses.replace(energy, names=tuple(names), source={**source, "vars": names})
    return load_energy(target, ckpt.names, constants, check_proper=False)


def _stored_energy(source: dict[str, Any], trust: bool, model: Path) -> Energy:
    """The energy stored in a checkpoint, to resume it: a Python file's stored code runs only
    with --trust (or when the file is given again, which the callers load instead)."""
    if source["kind"] == "file" and not trust:
        raise NfcliError(
            f"{model} was fitted to the Python file {source['path']}, and resuming runs "
            f"its code. Pass the file again (nfcli fit {source['path']} --resume {model}) "
            "or --trust to run the copy stored in the checkpoint."
        )
    return energy_from_source(source, trust)


@contextlib.contextmanager
def fit_progress() -> Iterator[Callable[..., Callable[[int, float, float], None]]]:
    """Rich progress bars on stderr; yields a factory of per-fit step callbacks, one bar each."""
    with Progress(
        TextColumn("[bold]{task.description}[/] {task.completed}/{task.total}"),
        BarColumn(),
        TextColumn("loss {task.fields[loss]:>9.4f}  β {task.fields[beta]:.3f}"),
        TextColumn("{task.fields[rate]:>6.0f} it/s"),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    ) as bar:

        def start(label: str, total: int, done0: int = 0) -> Callable[[int, float, float], None]:
            task = bar.add_task(
                label, total=total, completed=done0, loss=math.nan, beta=0.0, rate=0.0
            )
            t0 = time.perf_counter()

            def step(done: int, loss: float, beta: float, end: int | None = None) -> None:
                """``end``: where the fit now plans to stop (earlier than the total once its
                loss has levelled off): the bar's total, so the time left is estimated to it."""
                rate = (done - done0) / max(time.perf_counter() - t0, 1e-9)
                bar.update(task, completed=done, loss=loss, beta=beta, rate=rate, total=end)

            return step

        yield start


@app.command(cls=NfcliCommand, context_settings=EXPRESSION_FIRST)
@user_errors
def compare(
    ctx: typer.Context,
    targets: Annotated[
        str,
        typer.Argument(
            help="Comma-separated targets (built-ins, .py files or expressions), e.g. u1,u2,u3,u4."
        ),
    ],
    K: str = option("2,8,32", "--K", help="Comma-separated layer counts."),
    flow: str = option(
        "planar", "--flow", help=f"Comma-separated flow types: {', '.join(FLOW_TYPES)}."
    ),
    hidden: HiddenOpt = None,
    bins: BinsOpt = None,
    iters: IterOpt = None,
    batch: BatchOpt = None,
    lr: LrOpt = None,
    seed: SeedOpt = None,
    anneal: AnnealOpt = None,
    vars: VarsOpt = None,
    restarts: RestartsOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    threads: ThreadsOpt = None,
    jobs: int = option(
        1,
        "--jobs",
        help="Fits to run at once, each in its own worker process with its share of the threads "
        "(same results as one at a time; a line per finished fit instead of progress bars).",
    ),
    config: ConfigOpt = None,
    output: Path = option(
        Path("compare"), "--output", "-o", help="Folder for the fits, figure and summary.csv."
    ),
    force: Annotated[
        bool, typer.Option("--force", help="Refit and overwrite existing fits.")
    ] = False,
    reuse: Annotated[
        bool,
        typer.Option("--reuse", help="Draw from existing fits whose target and options match."),
    ] = False,
    format: FormatOpt = FIGURE_FORMAT,
    dpi: DpiOpt = FIGURE_DPI,
    window: WindowOpt = None,
    mcmc: Annotated[
        str | None,
        typer.Option(
            "--mcmc",
            help="Also sample each target by MCMC without a flow (rwmh or hmc) and draw it next "
            "to the target; draws in OUTPUT/<target>/mcmc-<method>.npy.",
        ),
    ] = None,
) -> None:
    """Fit each target with each K (and flow type) and draw the paper's Figure 3 for them:
    OUTPUT/compare.png, OUTPUT/summary.csv, and each fit in OUTPUT/<target>/<flow>-K<K>/."""
    refuse_unknown(ctx, targets)
    flags = dict(
        hidden=hidden,
        bins=bins,
        iters=iters,
        batch=batch,
        lr=lr,
        seed=seed,
        anneal=anneal,
        restarts=restarts,
        dtype=dtype,
        device=device,
    )
    yaml_values = load_yaml(config) if config is not None else {}
    for key in ("K", "flow", "target", "output", "force"):  # device: may be in the file
        if key in yaml_values:
            raise NfcliError(
                f"The config file {config} sets {key}:, which nfcli compare takes from its "
                "command line (the target list, --K, --flow, -o, --force). Remove it from the file."
            )
    values = merge_config(flags, yaml_values)
    per_flow = {k: values.pop(k) for k in ("hidden", "bins") if values.get(k) is not None}
    cfg = make_config(values)
    if "hidden" in per_flow:
        per_flow["hidden"] = make_config({"flow": "nice", "hidden": per_flow["hidden"]}).hidden
    where = resolve_device(str(values.get("device") or "cpu"))
    opts = FigureOptions(format, dpi, parse_window(window) if window else None)
    opts.validate()
    names = _split_vars(values.get("vars") if vars is None else vars)
    energies = [load_energy(t, names) for t in split_targets(targets)]
    Ks = parse_ints(K, "--K")
    flows = [f.strip() for f in flow.split(",")]
    widest = max(e.dim for e in energies)
    n = use_threads(threads or cfg.threads, fit_work(cfg.resolve(widest), widest))
    cfg = dataclasses.replace(cfg, threads=n)  # each fit keeps it (a worker of --jobs, its share)

    finished = []  # with --jobs, fits end in any order: each line says how many have

    def done(job: Any, r: TrustReport) -> None:
        kl = f", KL(q‖p) {r.kl_qp:.4f}" if r.kl_qp is not None else ""
        how = "reused" if job.reuse else f"{r.wall_time_s:.0f} s"
        finished.append(job)
        count = f"done {len(finished)}/{len(energies) * len(flows) * len(Ks)}: " if jobs > 1 else ""
        err.print(
            f"{count}{job.energy.label} {job.config.flow} K={job.config.K}: −ELBO {-r.elbo:.4f}"
            f"{kl}, {r.verdict} ({how}) → {job.folder}",
            soft_wrap=True,
        )

    def sampled(energy: Energy, run: Any, path: Path) -> None:
        rhat = max(v.rhat for v in run.variables)
        ess = min(min(v.ess_bulk, v.ess_tail) for v in run.variables)
        err.print(
            f"{energy.label} {run.settings.method}: {run.settings.chains} chains × {run.kept}, "
            f"R-hat {rhat:.3f}, ESS {ess:.0f} ({run.seconds:.1f} s) → {path}",
            soft_wrap=True,
        )

    bars = fit_progress()
    if jobs > 1:  # the workers' steps cannot be shown here
        bars = contextlib.nullcontext(None)
        err.print(
            f"--jobs {jobs}: up to {jobs} fits at a time, each in its own process; a line as each "
            "one ends (no progress bars)",
            soft_wrap=True,
        )
    with bars as progress:
        figure, summary, _ = run_compare(
            energies,
            Ks,
            flows,
            cfg,
            output,
            force,
            reuse,
            opts,
            progress,
            done,
            where,
            mcmc=mcmc,
            on_mcmc=sampled,
            jobs=jobs,
            **per_flow,
        )
    err.print(f"wrote {figure} and {summary}")


def _split_vars(text: str | list | None) -> list[str] | None:
    if text is None:
        return None
    names = text if isinstance(text, list) else [v.strip() for v in str(text).split(",")]
    if not all(isinstance(n, str) and n for n in names):
        raise NfcliError(f"--vars {text!r} must be comma-separated names, e.g. --vars x,y.")
    return names


def summary_table(r: TrustReport, written: str | None = None) -> Table:
    """The trust report of a fit (as in metrics.json and the checkpoint), as a table."""
    t = Table(title=f"nfcli fit: {r.target}", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    t.add_row("flow", f"{r.flow}, K = {r.K}, D = {r.dim} ({', '.join(r.vars or [])})")
    done = r.steps_done if r.steps_done is not None else r.iters
    if done == r.iters:
        steps = f"{done}"
    elif r.stopped is None and r.converged_step is not None:
        decay = done - r.converged_step  # the learning rate's decay, run after convergence
        steps = (
            f"{done} of at most {r.iters} (converged at step {r.converged_step}, then "
            f"{decay} steps of learning-rate decay)"
        )
    else:
        steps = f"{done} of {r.iters} ({r.stopped})"
    if r.start == "mode":
        steps += f", from the mode ({r.start_source} Gaussian)"
    share = f"; U and ∇U {r.energy_share:.0%} of it" if r.energy_share is not None else ""
    t.add_row("steps", f"{steps} in {r.wall_time_s:.1f} s ({r.iters_per_s:.0f} it/s{share})")
    if r.energy_compiled is not None and "failed" not in r.energy_compiled:
        t.add_row("energy", f"U {r.energy_compiled}")
    if r.flow_compiled is not None and "failed" not in r.flow_compiled:
        t.add_row("flow step", r.flow_compiled)
    t.add_row("final loss (β = 1)", f"{r.final_loss_beta1:.4f}")
    if r.restarts:
        scores = [s["score"] for s in r.restarts]
        t.add_row(
            "restarts",
            f"{len(scores)} fitted together "
            + ("to the end" if r.anneal == 0 else "until annealing ended")
            + f"; kept #{r.restart_kept}; "
            f"their ln Z estimates from {min(scores):.3f} to {max(scores):.3f}",
        )
    if r.stopped == "improper":  # no distribution to measure q against: no number is shown
        t.add_row(
            "ELBO, ln Z, KL, k̂",
            "none: the target is improper (exp(−U) has infinite mass), so there is no p for q "
            "to match and nothing for these to measure",
        )
    else:
        _measures_rows(t, r)
    if r.mode_search is not None:
        t.add_row("mode search", r.mode_search.describe())
    style = {"good": "bold green", "usable": "bold yellow"}.get(r.verdict, "bold red")
    t.add_row("verdict", Text(r.verdict.upper(), style=style))
    for reason in r.verdict_reasons:
        t.add_row("", reason)
    if r.sampler is not None:
        t.add_row("draws (samples.npy)", draws_row(r))
    if written:
        t.add_row("written", written)
    return t


def _measures_rows(t: Table, r: TrustReport) -> None:
    """The summary table's rows for what q's draws measure: ELBO, ln Z by importance sampling,
    ESS and k̂, and in 1-D and 2-D ln Z by quadrature, KL and TV."""
    n, sets = r.monte_carlo_samples, r.replicate_sets if r.replicate_sets is not None else 1
    over = f" over {sets} sets of {n:,} draws" if sets > 1 else ""
    f = r.outside_share
    if math.isfinite(r.elbo):
        t.add_row("ELBO", f"{r.elbo:.4f} ± {r.elbo_se:.4f}")
    else:  # q has draws where p = 0: no "± s.e." on an infinity; the finite part beside it
        inside = (
            ""
            if r.elbo_inside is None
            else (f"; over the other draws, {r.elbo_inside:.4f} ± {r.elbo_se:.4f}")
        )
        t.add_row("ELBO", f"−∞: U is not finite at {f:.2%} of q's draws (p = 0 there){inside}")
    ess, khat = r.ess_fraction, r.khat
    one_draw = ess * n < 2  # one weight carries everything: no k̂ or ln Z worth printing
    note = r.khat_note or (
        f"one draw carries the weight (ESS {ess * n:.1f} of {n:,})" if one_draw else ""
    )
    if math.isfinite(r.log_z_is) and not one_draw:
        log_z = f"{r.log_z_is:.4f} ± {r.log_z_is_se:.4f}"
        reps = [v for v in r.log_z_is_replicates or [] if math.isfinite(v)]
        if len(reps) > 1:
            log_z += f" (from {min(reps):.4f} to {max(reps):.4f}{over})"
        t.add_row("ln Z (importance sampling)", log_z)
    else:
        t.add_row("ln Z (importance sampling)", f"not available: {note or 'no finite weights'}")
    esses = r.ess_fraction_replicates if r.ess_fraction_replicates is not None else []
    lo, hi = (f"{min(esses):.1%}", f"{max(esses):.1%}") if esses else ("", "")
    same = f" (the same in each of {len(esses)} sets of {n:,} draws)"
    spread = "" if len(esses) < 2 else same if lo == hi else f" ({lo}–{hi}{over})"
    t.add_row("ESS (Kish)", f"{ess:.1%} of {n:,}{spread}")
    replicates = r.khat_replicates if r.khat_replicates is not None else [khat]
    khats = [k if math.isfinite(k) else math.inf for k in replicates]
    if not math.isfinite(khat) or one_draw:
        reading = f"not available: {note or 'the Pareto fit failed'} (do not trust)"
    elif r.verdict is not None and r.verdict != r.khat_verdict:  # not "good" beside DO NOT TRUST
        reading = f"{khat:.3f} ({r.khat_verdict} by k̂ alone; the verdict weighs everything)"
    else:
        reading = f"{khat:.3f} ({r.khat_verdict})"
    if len(khats) > 1:
        lo, hi = min(khats), max(khats)
        read_lo, read_hi = khat_verdict(lo), khat_verdict(hi)
        shown = "not available" if not math.isfinite(hi) else f"{hi:.3f}"
        reading += f"; {lo:.3f} to {shown}{over}"
        reading += f": borderline, {read_lo} to {read_hi}" if read_lo != read_hi else ""
    t.add_row("Pareto k̂", reading)
    q = r.quadrature
    if q is not None:
        if q.log_z is None or not math.isfinite(q.log_z):
            why = q.note or (
                "exp(−U) is 0 or NaN on the whole grid around q's samples, so p has no mass "
                "where q is"
            )
            t.add_row("ln Z (quadrature)", f"not available: {why}")
            for name in ("KL(q‖p)", "KL(p‖q)", "total variation"):
                t.add_row(name, "not available (needs ln Z by quadrature)")
        else:
            t.add_row("ln Z (quadrature)", f"{q.log_z:.4f}")
            if math.isfinite(q.kl_qp):
                t.add_row("KL(q‖p)", f"{q.kl_qp:.4f} ± {q.kl_qp_se:.4f} nats")
            else:
                inside = r.kl_qp_inside
                t.add_row(
                    "KL(q‖p)",
                    f"∞: q puts {f:.2%} of its draws where p = 0"
                    + (
                        f"; q restricted to p's support: {inside:.4f} ± {q.kl_qp_se:.4f} nats"
                        if inside is not None
                        else ""
                    ),
                )
            t.add_row("KL(p‖q)", f"{q.kl_pq:.4f} nats")
            t.add_row("total variation", f"{q.tv:.4f}")


def draws_row(r: TrustReport) -> Text:
    """Where samples.npy's draws come from, and for MCMC how far to trust its chains."""
    c = r.chains
    if r.sampler == "q" and c is None:
        return Text(f"q's own ({r.sampler_reason})")
    if c is None:
        return Text(f"{r.sampler}: {r.sampler_reason}")
    head = (
        f"{c['method']} MCMC with the flow, {c['chains']} chains × {c['draws_per_chain']} after "
        f"{c['warmup']} warm-up, {c['seconds']:.1f} s: R-hat ≤ {_num(c['max_rhat'], '.3f')}, "
        f"ESS bulk ≥ {_num(c['min_ess_bulk'], ',.0f')}, tail ≥ {_num(c['min_ess_tail'], ',.0f')}"
    )
    style = "bold green" if c["verdict"] == "good" else "bold red"
    text = Text.assemble(head, " — ", (c["verdict"].upper(), style))
    for worry in c["worries"]:
        text.append(f"\n{worry}")
    if r.sampler == "q":
        text.append(f"\nsamples.npy holds q's own draws: {r.sampler_reason}")
    return text


def _num(x: float | None, fmt: str) -> str:
    return "n/a" if x is None else format(x, fmt)


# --- sample, plot, targets ---------------------------------------------------------------------


@app.command(cls=NfcliCommand)
@user_errors
def sample(
    model: Path = typer.Argument(..., help="A model.pt written by nfcli fit."),
    n: int = option(10_000, "-n", help="Number of samples."),
    output: str = option(
        "draws.npy",
        "--output",
        "-o",
        help="File (.npy, .csv, .pt) or - for CSV on stdout; not the fit's samples.npy, which is "
        "never replaced without --force.",
    ),
    seed: int = option(0, "--seed", help="Random seed."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
    resample_: bool = typer.Option(
        False,
        "--resample",
        help="Sampling-importance-resampling towards p (needs the energy; prints the ESS).",
    ),
    pool: int = typer.Option(
        None, "--pool", help="Draws of q to resample from. (default: max(10·n, 100000))"
    ),
    trust: bool = typer.Option(
        False, "--trust", help="With --resample: run a stored Python-file energy (its code)."
    ),
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    threads: ThreadsOpt = None,
    at: AtOpt = None,
) -> None:
    """Draw samples from a fitted flow; needs only the checkpoint (and the energy to resample).
    A conditional fit draws from q(z | c) at the one condition of --at."""
    if n <= 0:
        raise NfcliError(f"-n {n}: the number of samples must be positive, e.g. -n 10000.")
    check_sample_path(output, force)
    ckpt = _load_to(model, device, dtype, at, "sample")
    use_threads(threads, Work(n, ckpt.flow.dim))
    generator = make_generator(ckpt.flow.base.loc.device, seed)
    if resample_:
        pool = pool if pool is not None else max(10 * n, 100_000)
        if pool <= 0:
            raise NfcliError(f"--pool {pool}: the pool must be positive, e.g. --pool 100000.")
        energy = ckpt.energy(trust)
        samples, imp = resample(ckpt.flow, energy, n, pool, generator)
        err.print(
            f"resampled {n} from {pool:,} draws of q: ESS {imp.ess_fraction:.1%} of the pool "
            f"({imp.ess_fraction * pool:,.0f}), Pareto k̂ {imp.khat:.2f} ({khat_verdict(imp.khat)})"
        )
    else:
        samples = ckpt.flow.sample(n, generator)
    save_samples(samples, output, ckpt.names)
    if output != "-":
        err.print(f"wrote {n} samples of {_count(ckpt.flow.dim, 'variable')} to {output}")


@dataclasses.dataclass
class Loaded:
    """The flow a command works on: a fit's q, or a conditional fit's q(·|c) at one c; its
    variable names, and how to get its energy (p, or p(·|c))."""

    flow: Any  # nfcli.flows.Flow
    names: tuple[str, ...]
    source: dict[str, Any]
    checkpoint: Checkpoint | ConditionalCheckpoint
    c: Any = None  # the condition (C,) of a conditional fit, else None

    def energy(self, trust: bool = False) -> Energy:
        whole = energy_from_source(self.source, trust)
        ckpt = self.checkpoint
        if isinstance(ckpt, ConditionalCheckpoint):
            return ConditionalEnergy(whole, ckpt.conditions).at(self.c)
        return whole


def _load_to(
    model: Path,
    device: str | None,
    dtype: str | None,
    at: str | None = None,
    command: str = "sample",
) -> Loaded:
    """A checkpoint's flow moved to ``device`` and ``dtype`` (default: CPU, as fitted); of a
    conditional fit, q(·|c) at the one condition of ``at``."""
    where = resolve_device(device or "cpu")
    precision = resolve_dtype(dtype) if dtype else None
    ckpt = load_any(model)
    grid = _at_grid(ckpt, at, model, command)
    if isinstance(ckpt, ConditionalCheckpoint):
        if len(grid) != 1:
            raise NfcliError(
                f"--at {at} gives {len(grid)} conditions, and nfcli {command} works at one: give "
                f"one value per condition, e.g. --at {_example_at(ckpt)} (nfcli plot and "
                "nfcli report take a grid)."
            )
        c = grid[0]
        flow = ckpt.flow.at(c.to(ckpt.flow.lo)).to(device=where, dtype=precision)
        return Loaded(flow.eval(), ckpt.names, ckpt.energy_source, ckpt, c)
    ckpt.flow = ckpt.flow.to(device=where, dtype=precision)
    return Loaded(ckpt.flow, ckpt.names, ckpt.energy_source, ckpt)


def _load_fit_to(model: Path, device: str | None, dtype: str | None) -> Checkpoint:
    """A fit to one target (a conditional fit is refused) with its flow moved to ``device`` and
    ``dtype`` (default: CPU, as fitted)."""
    where = resolve_device(device or "cpu")
    precision = resolve_dtype(dtype) if dtype else None
    ckpt = load_checkpoint(model)
    ckpt.flow = ckpt.flow.to(device=where, dtype=precision)
    return ckpt


def _example_at(ckpt: ConditionalCheckpoint) -> str:
    return ",".join(f"{c.name}={(c.lo + c.hi) / 2:.3g}" for c in ckpt.conditions)


def _at_grid(
    ckpt: Checkpoint | ConditionalCheckpoint, at: str | None, model: Path, command: str
) -> Any:
    """The conditions of ``--at`` (M, C) for a conditional fit (which needs it); None for a fit
    to one target (which refuses it)."""
    if isinstance(ckpt, ConditionalCheckpoint):
        if at is None:
            raise NfcliError(
                f"{model} is a conditional fit, q(z | {', '.join(ckpt_names(ckpt))}), so nfcli "
                f"{command} needs the condition: give --at with a value for each of "
                f"{ckpt.describe_conditions()}, e.g. --at {_example_at(ckpt)}."
            )
        return parse_at(at, ckpt.conditions)
    if at is not None:
        raise NfcliError(
            f"--at {at}: {model} is a fit to one target, not a conditional fit (nfcli fit "
            "--condition), so it has no conditions to set. Drop --at."
        )
    return None


def ckpt_names(ckpt: ConditionalCheckpoint) -> list[str]:
    return [c.name for c in ckpt.conditions]


@app.command(cls=NfcliCommand)
@user_errors
def logprob(
    model: Path = typer.Argument(..., help="A model.pt written by nfcli fit."),
    points: Path = typer.Argument(..., help="Points, one per row: a .npy or .csv file."),
    output: str = option(
        "-", "--output", "-o", help="File (.npy, .csv, .pt) or - for CSV on stdout."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
    threads: ThreadsOpt = None,
    at: AtOpt = None,
) -> None:
    """The fitted density ln q at each point, exact (by inverting the flow), in float64. For a
    conditional fit, ln q(z | c) at the one condition of --at."""
    check_sample_path(output, force)
    loaded = _load_to(model, None, None, at, "logprob")
    zs = load_points(points, loaded.flow.dim, loaded.names)
    use_threads(threads, Work(len(zs), loaded.flow.dim))
    log_q = log_prob(loaded.flow, zs)
    save_samples(log_q[:, None], output, ["log_q"])
    if output != "-":
        err.print(f"wrote ln q of {len(log_q)} points to {output}")


@app.command(cls=NfcliCommand)
@user_errors
def plot(
    model: Path = typer.Argument(..., help="A model.pt written by nfcli fit."),
    output: Path = typer.Option(None, "--output", "-o", help="Folder (default: the model's)."),
    trust: bool = typer.Option(
        False, "--trust", help="Run the checkpoint's stored Python-file energy (its code)."
    ),
    format: FormatOpt = FIGURE_FORMAT,
    dpi: DpiOpt = FIGURE_DPI,
    window: WindowOpt = None,
    layers: Annotated[
        str | None,
        typer.Option("--layers", help="Layers in layers.png, e.g. 0,1,2,8,32. (default: all)"),
    ] = None,
    show: Annotated[
        str | None, typer.Option("--show", help="Variables in pairs.png when D > 2, e.g. x1,x2,x5.")
    ] = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    threads: ThreadsOpt = None,
    at: AtOpt = None,
) -> None:
    """Draw a checkpoint's figures: density (D ≤ 2), layers, loss, and pairs (D > 2).

    A conditional fit with --at (a value or a grid): conditional.png, the target and q side by
    side at each condition (2-D: density images; 1-D: curves), and with one condition kl.png,
    KL(q‖p) and KL(p‖q) against it."""
    opts = FigureOptions(
        format,
        dpi,
        parse_window(window) if window else None,
        parse_ints(layers, "--layers") if layers else None,
        _split_vars(show) if show else None,
    )
    opts.validate()
    resolve_device(device or "cpu")  # a bad --device or --dtype is refused before loading
    if dtype:
        resolve_dtype(dtype)
    whole = load_any(model)
    if isinstance(whole, ConditionalCheckpoint):
        grid = _at_grid(whole, at, model, "plot")
        if layers or show or device or dtype:
            raise NfcliError(
                "nfcli plot --at draws conditional.png and kl.png on the CPU; --layers, --show, "
                "--device and --dtype apply to a fit to one target only. Drop them."
            )
        use_threads(threads, Work(N_SAMPLES * len(grid), whole.flow.dim))
        out_dir = ensure_dir(output if output is not None else model.parent)
        energy = ConditionalEnergy(energy_from_source(whole.energy_source, trust), whole.conditions)
        points = None
        if whole.flow.dim <= 2:
            points = evaluate_at(whole.flow, energy, grid, PLOT_DRAWS, whole.config.seed)
        for path in write_conditional_figures(whole, energy, grid, out_dir, opts, points):
            err.print(f"wrote {path}")
        return
    _at_grid(whole, at, model, "plot")  # refuses --at
    ckpt = _load_fit_to(model, device, dtype)
    opts.validate(ckpt.names, ckpt.config.K)
    use_threads(threads, Work(N_SAMPLES, ckpt.flow.dim))
    out_dir = ensure_dir(output if output is not None else model.parent)
    try:
        energy = energy_from_source(ckpt.energy_source, trust)
    except NfcliError as e:
        if ckpt.energy_source["kind"] != "file" or trust:
            raise
        err.print(Text.assemble(("note: ", "yellow"), f"drawing the fitted density only. {e}"))
        energy = None
    for path in write_figures(ckpt, energy, out_dir, opts):
        err.print(f"wrote {path}")


PLOT_DRAWS = 10_000  # draws of q(·|c) per condition for plot --at's KL numbers


@app.command(cls=NfcliCommand)
@user_errors
def report(
    model: Path = typer.Argument(..., help="A model.pt written by nfcli fit."),
    at: AtOpt = None,
    trust: bool = typer.Option(
        False, "--trust", help="With --at: run the checkpoint's stored Python-file energy."
    ),
    n: int = option(REPORT_DRAWS, "-n", help="With --at: draws of q(·|c) per condition."),
    threads: ThreadsOpt = None,
) -> None:
    """Print a fit's trust report (diagnostics and verdict) again, from its checkpoint.

    A conditional fit with --at (a value or a grid): the trust report at each condition (ELBO,
    KL(q‖p), KL(p‖q) and TV by quadrature in 1-2 D, ESS, k̂), with the mean and the worst."""
    whole = load_any(model)
    grid = _at_grid(whole, at, model, "report")
    if isinstance(whole, ConditionalCheckpoint):
        if n <= 0:
            raise NfcliError(f"-n {n}: the number of draws must be positive, e.g. -n 20000.")
        use_threads(threads, Work(n, whole.flow.dim))
        energy = ConditionalEnergy(energy_from_source(whole.energy_source, trust), whole.conditions)
        points = evaluate_at(whole.flow, energy, grid, n, whole.config.seed)
        out.print(conditional_table(whole.report, points, summarise(points)))
        return
    out.print(summary_table(whole.report))
    out.print(flow_summary_table(whole.flow, whole.names))


@app.command(cls=NfcliCommand)
@user_errors
def summary(
    model: Path = typer.Argument(..., help="A model.pt written by nfcli fit."),
    n: int = option(100_000, "-n", help="Draws of q to summarise."),
    resample_: bool = typer.Option(
        False,
        "--resample",
        help="Summarise p: weight the draws of q by p̃/q (needs the energy; shows the ESS).",
    ),
    pool: int = typer.Option(
        None, "--pool", help="With --resample: draws of q to weight. (default: -n)"
    ),
    seed: int = option(0, "--seed", help="Random seed."),
    trust: bool = typer.Option(
        False, "--trust", help="With --resample: run a stored Python-file energy (its code)."
    ),
    format: str = option(
        "table", "--format", help="table, or csv or json (to stdout, for scripts)."
    ),
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    at: AtOpt = None,
) -> None:
    """Per-variable mean, sd, MCSE and quantiles of q (with --resample: of p, and the ESS).

    Without --resample: -n draws of the fitted flow q. With it: -n (or --pool) draws of q weighted
    by p̃/q, which estimate p's statistics (what resampling them estimates, without its noise). A
    conditional fit is summarised at the one condition of --at."""
    check_summary_options(n, format)
    if pool is not None and (not resample_ or pool <= 0):
        raise NfcliError(
            f"--pool {pool}: "
            + ("the pool must be positive" if resample_ else "only --resample weights a pool")
            + ", e.g. nfcli summary model.pt --resample --pool 100000."
        )
    loaded = _load_to(model, device, dtype, at, "summary")
    energy = loaded.energy(trust) if resample_ else None
    generator = make_generator(loaded.flow.base.loc.device, seed)
    s = summarise_flow(loaded.flow, loaded.names, pool or n, generator, energy)
    if format == "table":
        out.print(variables_table(s))
    else:
        typer.echo(to_csv(s) if format == "csv" else to_json(s), nl=False)


@contextlib.contextmanager
def mcmc_progress() -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar of MCMC iterations on stderr; yields its update callback."""
    with Progress(
        TextColumn("[bold]mcmc[/] {task.completed}/{task.total} iterations"),
        BarColumn(),
        TimeRemainingColumn(),
        console=err,
    ) as bar:
        task = bar.add_task("mcmc", total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


@app.command(cls=NfcliCommand, context_settings=EXPRESSION_FIRST)
@user_errors
def mcmc(
    ctx: typer.Context,
    target: Annotated[
        str,
        typer.Argument(
            help="A model.pt written by nfcli fit, or an energy as for nfcli fit (an expression, "
            "a .py file or a built-in)."
        ),
    ],
    method: Annotated[
        str | None,
        typer.Option(
            "--method",
            help="neutra (HMC in the flow's base space), independence (MH with q as the "
            "proposal), hmc or rwmh (random-walk MH). (default: with a model.pt, independence "
            "if the fit's verdict is good, else neutra; hmc for an energy)",
        ),
    ] = None,
    chains: int = option(4, "--chains", help="Independent chains."),
    draws: int = option(1000, "--draws", help="Draws kept per chain, after the warm-up."),
    warmup: Annotated[
        int | None,
        typer.Option(
            "--warmup",
            help="Warm-up iterations per chain, thrown away: they tune the step. (default: "
            + ", ".join(f"{m} {w}" for m, w in DEFAULT_WARMUP.items())
            + ")",
        ),
    ] = None,
    steps: int = option(10, "--steps", help="Leapfrog steps per HMC iteration (hmc, neutra)."),
    seed: int = option(0, "--seed", help="Random seed."),
    output: str = option(
        "chains.npy",
        "--output",
        "-o",
        help="Draws file (.npy, .csv, .pt) with a chain column first; the summary goes beside it "
        "as .json.",
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite existing files."),
    trust: bool = typer.Option(
        False, "--trust", help="Run a model.pt's stored Python-file energy (its code)."
    ),
    vars: VarsOpt = None,
    const: ConstOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """Asymptotically exact samples of p by MCMC, several chains, with split R-hat and bulk/tail
    ESS per variable.

    With a fitted model.pt the flow preconditions the chains (NeuTra HMC, or independence MH whose
    acceptance ratio uses q's exact density); with an energy alone, HMC or random-walk MH. Ctrl-C
    stops after the current iteration and writes the draws kept so far."""
    bindings, rest = split_bindings(ctx.args)
    refuse_unknown(ctx, target, rest)
    path, _ = check_draws_path(output, force)
    flow, verdict = None, None
    if target.strip().lower().endswith(".pt"):
        if vars or const or bindings:
            raise NfcliError(
                "--vars and constants belong to the fit: a model.pt already has its variables "
                "and constants. Drop them, or give the energy itself instead of the model.pt."
            )
        ckpt = load_checkpoint(Path(target.strip()))
        energy = energy_from_source(ckpt.energy_source, trust)
        flow, verdict = ckpt.flow, ckpt.report.verdict
    else:
        constants = parse_constants([*bindings, *(const or [])])
        energy = load_energy(target, _split_vars(vars), constants)
    asked = McmcSettings(method, chains, draws, warmup, steps, seed)
    mixture = flow is not None and is_mixture(flow)
    settings = asked.resolve(flow is not None, verdict, mixture)
    why = "" if method else f" ({default_method(flow is not None, verdict, mixture)[1]})"
    use_threads(threads, Work(chains, energy.dim))
    err.print(
        f"sampling {energy.label} over ({', '.join(energy.names)}), D = {energy.dim}: "
        f"{settings.method}{why}, {settings.chains} chains × ({settings.warmup} warm-up + "
        f"{settings.draws}); Ctrl-C stops and keeps the draws so far",
        soft_wrap=True,
    )
    if verdict == "do not trust":
        err.print(
            Text.assemble(
                ("warning: ", "yellow"),
                "the fit's verdict is do not trust (nfcli report shows why). The chains correct "
                "q's shape where they go, but a mode that q lost (the report's mode search) is "
                "lost to them too: they start at q's draws and do not cross to far modes.",
            ),
            soft_wrap=True,
        )
    with stop_on_signals(announce=False) as stop, mcmc_progress() as progress:
        run = run_mcmc(energy, asked, flow, Watch(progress, stop), target.strip(), verdict)
    if run.kept == 0:
        err.print(
            f"[bold yellow]{stop.name or 'stopped'}[/] during the warm-up "
            f"({run.chains.warmup_done} of {settings.warmup} iterations): no draws were kept, "
            "nothing was written."
        )
        raise typer.Exit(130)
    summary = write_mcmc(run, path)
    err.print(chains_table(run))
    for w in run.worries:
        err.print(Text.assemble(("warning: ", "yellow"), w), soft_wrap=True)
    err.print(f"wrote {settings.chains} chains × {run.kept} draws to {path} and {summary}")
    if run.interrupted:
        err.print(
            f"[bold yellow]{stop.name or 'stopped'}[/]: kept {run.kept} of {settings.draws} "
            "draws per chain.",
        )
        raise typer.Exit(130)


@app.command(cls=NfcliCommand)
def targets() -> None:
    """List the built-in targets with their formulas and reference ln Z."""
    t = Table(title="built-in targets (p ∝ exp(−U), variables z1, z2)", show_lines=True)
    for col in ("name", "description", "U(z1, z2)", "ln Z"):
        t.add_column(col, overflow="fold")
    for tg in TARGETS.values():
        log_z = f"{tg.log_z:.4f} ({tg.log_z_source})" if math.isfinite(tg.log_z) else "—"
        t.add_row(tg.name, tg.description, tg.shown, log_z)
    out.print(t)
    f = Table(
        title="built-in families (nfcli fit NAME: one conditional fit for every condition)",
        show_lines=True,
    )
    for col in ("name", "description", "U(z1, z2; c)", "conditions"):
        f.add_column(col, overflow="fold")
    for fam in FAMILIES.values():
        ranges = ", ".join(f"{n} in [{lo:.4g}, {hi:.4g}]" for n, lo, hi in fam.conditions)
        f.add_row(fam.name, fam.description, fam.expression, ranges)
    out.print(f)


OPTION_LIKE = re.compile(r"--?[A-Za-z][\w-]*(=.*)?")


def protect_expressions(argv: list[str]) -> list[str]:
    """Click reads every word that starts with '-' as an option, so an expression such as
    "-log(x) + x" would be taken apart. Words that start with '-' but are not shaped like an
    option (or a lone '-' or '--') get a leading space, which the expression parser and int()
    and float() ignore; click then sees an argument or an option's value."""
    return [
        f" {a}"
        if a.startswith("-") and a not in ("-", "--") and not OPTION_LIKE.fullmatch(a)
        else a
        for a in argv
    ]


def _count(n: int, noun: str) -> str:
    """'1 variable', '2 variables'."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def plain_help() -> None:
    """Typer 0.2x writes a type after every option, ``<bool>`` even for flags and ``--help``, and a
    required argument as ``{model}`` in the usage line. Show no type for flags and arguments in
    capitals (``MODEL``, ``[TARGET]``), as click and most tools do. Versions without these hooks
    are left as they are."""
    core = typer.core
    option, argument = getattr(core, "TyperOption", None), getattr(core, "TyperArgument", None)
    if option is not None and hasattr(option, "display_type_rich"):
        typed = option.display_type_rich

        def display_type_rich(self: Any, ctx: Any) -> str | None:
            return None if self.is_flag else typed(self, ctx)

        option.display_type_rich = display_type_rich
    if argument is not None and hasattr(argument, "_usage_display_name"):

        def usage_name(self: Any) -> str:
            name = self.display_name_raw.upper()
            name = name if self.required else f"[{name}]"
            return name + ("..." if self.nargs != 1 else "")

        argument._usage_display_name = usage_name


plain_help()


# --- nfcli vae, nfcli vae-eval: the paper's MNIST experiment (nfcli.vae.run) --------------------


@contextlib.contextmanager
def vae_progress() -> Iterator[Callable[[str, int], Callable[..., None]]]:
    """Rich progress bars on stderr: a factory of callbacks, one bar per label (training or
    evaluation)."""
    with Progress(
        TextColumn("[bold]{task.description}[/] {task.completed}/{task.total}"),
        BarColumn(),
        TextColumn("{task.fields[note]}"),
        TimeRemainingColumn(),
        console=err,
    ) as bar:

        def start(label: str, total: int, done0: int = 0) -> Callable[..., None]:
            task = bar.add_task(label, total=total, completed=done0, note="")

            def update(done: int, *rest: Any) -> None:
                """(done, total) from an evaluation, (done, ELBO, total) from training."""
                note = f"ELBO {rest[0]:9.2f}" if len(rest) == 2 else ""
                bar.update(task, completed=done, total=rest[-1], note=note)

            return update

        yield start


def _parse_ks(text: str) -> list[int]:
    try:
        ks = [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        ks = []
    if not ks or any(k < 0 for k in ks) or len(set(ks)) != len(ks):
        raise NfcliError(
            f"--K {text!r}: give the flow's length, 0 (no flow: the diagonal Gaussian "
            "posterior) or more, or a list of distinct lengths for a table, e.g. --K 0,10,20,40,80."
        )
    return ks


@app.command(cls=NfcliCommand)
@user_errors
def vae(
    data: str = option(
        "mnist",
        "--data",
        help="mnist (after make mnist), synthetic (a small generated set), or a .npy/.npz of "
        "images with values in [0, 1] (uint8 0..255 is divided by 255).",
    ),
    flow: str = option("planar", "--flow", help="The posterior's layers: planar or radial."),
    K: str = option(
        "10", "--K", help="Flow length (0: diagonal Gaussian), or a list such as 0,10,20,40,80."
    ),
    budget: str = option(
        "cpu",
        "--budget",
        help="cpu (15,000 Adam updates, lr 1e-3) or paper (500,000 RMSprop updates, lr 1e-5, "
        "momentum 0.9: for a GPU); --updates and --lr override it.",
    ),
    updates: Annotated[
        int | None, typer.Option("--updates", help="Updates (mini-batches).")
    ] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Learning rate.")] = None,
    latent: int = option(40, "--latent", help="Latent variables."),
    hidden: str = option("400,400", "--hidden", help="Hidden units of encoder and decoder."),
    batch: int = option(100, "--batch", help="Images per update."),
    anneal: Annotated[
        int | None,
        typer.Option(
            "--anneal",
            help="Updates of β from 0.01 to 1 (0: none). (default: 2/3 of --updates, at most the "
            "paper's 10,000)",
        ),
    ] = None,
    binarize: str = option(
        "dynamic", "--binarize", help="dynamic (a fresh draw every update) or fixed (once)."
    ),
    seed: int = option(0, "--seed", help="Random seed."),
    samples: int = option(200, "--samples", help="Importance samples per test image."),
    test_images: Annotated[
        int | None, typer.Option("--test-images", help="Evaluate on the first N test images.")
    ] = None,
    output: str = option("runs/vae", "--output", "-o", help="Output folder."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing model.pt."),
    resume: Annotated[
        Path | None,
        typer.Option(
            "--resume",
            help="A model.pt of nfcli vae to go on training, to --updates; its data and other "
            "settings are the checkpoint's.",
        ),
    ] = None,
    device: DeviceOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """Train a VAE whose posterior q(z | x) is a normalizing flow amortised by the encoder (the
    paper's MNIST experiment, Table 2), then estimate the test −ln p(x) by importance sampling.

    Writes model.pt, metrics.json, curves.png, samples.png and reconstructions.png; with a list
    of K, one folder per K plus summary.csv and nll.png. Ctrl-C stops after the current update
    and writes the model so far (go on with --resume)."""
    from nfcli.checkpoint import load_vae_checkpoint
    from nfcli.vae.data import load_images
    from nfcli.vae.run import check_evaluation, run_vae, run_vae_table, table_row
    from nfcli.vae.train import VaeConfig, with_budget

    if resume is not None:
        ckpt = load_vae_checkpoint(resume)
        if ckpt.training is None:
            raise NfcliError(f"{resume} holds no training state, so it cannot be resumed.")
        cfg = dataclasses.replace(ckpt.config, updates=updates or ckpt.config.updates)
        if cfg.updates <= ckpt.training.step:
            raise NfcliError(
                f"{resume} has done {ckpt.training.step} of its {ckpt.config.updates} updates. "
                f"Pass --updates N with N above {ckpt.training.step} to train it longer."
            )
        images = load_images(ckpt.data["spec"], int(ckpt.data["seed"]))
        ks, out_dir, force = [cfg.K], Path(output) if output != "runs/vae" else resume.parent, True
    else:
        ckpt, ks = None, _parse_ks(K)
        cfg = with_budget(VaeConfig(), budget)
        cfg = dataclasses.replace(
            cfg,
            flow=flow,
            K=ks[0],
            latent=latent,
            hidden=tuple(parse_hidden(hidden)),
            batch=batch,
            anneal=anneal,
            binarize=binarize,
            seed=seed,
            updates=updates if updates is not None else cfg.updates,
            lr=lr if lr is not None else cfg.lr,
        )
        for k in ks:
            dataclasses.replace(cfg, K=k).validate()
        check_evaluation(samples, test_images)
        images = load_images(data, seed)
        out_dir = Path(output)
    where = resolve_device(device or "cpu")
    use_threads(threads, Work(cfg.batch, cfg.hidden[0]))
    err.print(
        f"training a VAE on {images.name} ({len(images.train)} training images of "
        f"{images.shape[0]}×{images.shape[1]}): {cfg.latent} latents, "
        f"{'K = ' + ','.join(map(str, ks))} {cfg.flow}, {cfg.updates:,} {cfg.optimizer} "
        f"updates on {where}; "
        "Ctrl-C stops after the current update and keeps the model so far",
        soft_wrap=True,
    )
    with stop_on_signals() as stop, vae_progress() as progress:

        def one(config: VaeConfig, folder: Path) -> Any:
            done = ckpt.training.step if ckpt is not None and ckpt.training else 0
            return run_vae(
                images,
                config,
                folder,
                force,
                progress(f"K={config.K} train", config.updates, done),
                stop,
                samples,
                test_images,
                progress(f"K={config.K} test −ln p(x)", 1),
                resume=ckpt,
                data_spec=ckpt.data["spec"] if ckpt is not None else data,
                device=where,
            )

        if len(ks) == 1:
            rows = [table_row(cfg.K, one(cfg, out_dir))]
        else:
            rows = run_vae_table(images, cfg, ks, out_dir, force, one)
    table = Table(title=f"nfcli vae: {images.name}, {cfg.updates:,} updates")
    # every bound as a positive number of nats, lower better: −ln p(x) ≤ −ELBO
    for col in ("K", "test −ln p(x)", "± s.e.", "test −ELBO", "valid −ELBO", "train s", "folder"):
        table.add_column(col, justify="right")
    for r in rows:
        ev = r.evaluation
        table.add_row(
            str(r.K),
            f"{ev.nll:.2f}" if ev else "—",
            f"{ev.nll_se:.2f}" if ev else "—",
            f"{ev.neg_elbo:.2f}" if ev else "—",
            f"{-r.valid_elbo:.2f}" if r.valid_elbo is not None else "—",
            f"{r.train_seconds:.0f}" if r.train_seconds is not None else "—",
            str(r.folder),
        )
    err.print(table)
    if stop.name is not None:
        err.print(
            f"[bold yellow]{stop.name}[/]: stopped; wrote the model so far. Continue it with: "
            f"nfcli vae --resume {rows[-1].folder / 'model.pt'}",
            soft_wrap=True,
        )
        raise typer.Exit(130)


@app.command("vae-eval", cls=NfcliCommand)
@user_errors
def vae_eval(
    model: Annotated[Path, typer.Argument(help="A model.pt written by nfcli vae.")],
    samples: int = option(200, "--samples", help="Importance samples per test image."),
    test_images: Annotated[
        int | None, typer.Option("--test-images", help="Evaluate on the first N test images.")
    ] = None,
    seed: int = option(0, "--seed", help="Seed of the test images' binarisation and draws."),
    device: DeviceOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """The test −ln p(x) of a trained VAE by importance sampling (S draws of q(z | x) per test
    image), with its standard error over the images; written to eval-S<samples>.json beside the
    model."""
    import json as _json

    from nfcli.checkpoint import load_vae_checkpoint
    from nfcli.vae.data import load_images
    from nfcli.vae.run import check_evaluation
    from nfcli.vae.train import evaluate

    check_evaluation(samples, test_images)
    ckpt = load_vae_checkpoint(model)
    images = load_images(ckpt.data["spec"], int(ckpt.data["seed"]))
    test = images.test[:test_images] if test_images is not None else images.test
    use_threads(threads, Work(100, ckpt.config.hidden[0]))
    with vae_progress() as progress:
        ev = evaluate(
            ckpt.model,
            test,
            samples,
            seed,
            progress("test −ln p(x)", len(test)),
            device=resolve_device(device or "cpu"),
        )
    path = model.parent / f"eval-S{samples}.json"
    text = _json.dumps(ev.to_dict(), indent=2) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))
    out.print(
        f"test −ln p(x) = {ev.nll:.2f} ± {ev.nll_se:.2f} nats (S = {samples}, {ev.images} images "
        f"of {images.name}; −ELBO {ev.neg_elbo:.2f}); wrote {path}"
    )


def main() -> None:
    """The console script (and ``python -m nfcli``): the app, then a fast exit. Everything nfcli
    writes is written, flushed and closed (atomically) before the app returns, so the process
    ends by os._exit once stdout and stderr are flushed, with the app's exit code, skipping the
    interpreter's teardown of torch's modules (a visible part of a short command such as nfcli
    targets; within the noise of a whole fit, benchmarks/overhead.py). The command reaches it
    through ``nfcli.launch``, which imports this module with the garbage collector paused."""
    try:
        app(args=protect_expressions(sys.argv[1:]), prog_name="nfcli")
        code = 0
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
