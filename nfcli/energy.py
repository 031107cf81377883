"""What a fit targets: an energy U(z), p(z) ∝ exp(−U(z)), with its variable names and its source.

A TARGET is one of three things, tried in this order:
  * the name of a built-in (``nfcli targets`` lists them);
  * a path ending in ``.py``: a Python file defining ``energy(z)`` and its dimension (see below);
  * an expression string in SymPy syntax, parsed safely by ``nfcli.expr``.

A Python file is the user's own code and running it runs that code. It must define

    DIM = 2                      # the dimension D (or NAMES = ["a", "b"], which implies D)
    def energy(z):               # z: torch tensor (N, D) → (N,) energies
        ...

and may define ``NAMES`` (one name per column) for axis labels and CSV headers. A file for a
family of targets (``nfcli fit FILE --condition c=LO:HI``) also lists its conditions and takes
them as a second argument:

    CONDITION = ["theta"]        # the condition variables c
    def energy(z, c):            # z (N, D), c (N, C) → (N,) energies U(z; c)

Such a file's Energy is over (z, c), z's columns first, with ``source["conditions"]`` naming c;
only a conditional fit takes it (``load_energy(..., conditional=True)``).
"""

from __future__ import annotations

import difflib
import math
import os
import re
import traceback
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from nfcli.errors import NfcliError
from nfcli.expr import Expression, improper_variables, parse
from nfcli.targets import TARGETS

_BARE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass
class Energy:
    """U: (N, D) → (N,), the variable names in column order, and where U came from.

    ``source`` is plain data, stored in checkpoints: {"kind": "builtin" | "expression" | "file",
    "text": expression or file contents, "path": file path or None, "name": built-in name or None,
    "vars": the names}.
    """

    fn: Callable[[Tensor], Tensor]
    names: tuple[str, ...]
    source: dict[str, Any]
    log_z: float | None = None  # reference ln Z where known (built-ins)

    @property
    def dim(self) -> int:
        return len(self.names)

    def __call__(self, z: Tensor) -> Tensor:
        return self.fn(z)

    @property
    def label(self) -> str:
        s = self.source
        label = s["name"] or (Path(s["path"]).name if s["path"] else s["text"])
        bound = s.get("constants") or {}
        return label + "".join(f" {k}={v:g}" for k, v in bound.items())


def load_energy(
    target: str,
    names: Sequence[str] | None = None,
    constants: Mapping[str, float] | None = None,
    check_proper: bool = True,
    conditional: bool = False,
) -> Energy:
    """Resolve a TARGET string (built-in name, ``.py`` path, or expression) to an Energy.

    ``constants`` binds names of an expression to numbers (``nu=3``). A bare name that is not a
    built-in, and a path to a file that is not a ``.py`` file, are refused rather than read as a
    formula; so is an expression that is flat or linear in one of its variables (its density has
    infinite mass: improper), unless ``check_proper`` is False."""
    target = target.strip()
    if not target:
        raise NfcliError("The target is empty. Give an expression, a .py file or a built-in name.")
    if constants and (target in TARGETS or target.endswith(".py")):
        what = "a built-in target" if target in TARGETS else "a Python file"
        raise NfcliError(
            f"{target} is {what}, and constants such as "
            f"{', '.join(f'{k}={v:g}' for k, v in constants.items())} apply only to expressions. "
            + (
                "Set them in the file instead."
                if target.endswith(".py")
                else "Write the expression out to change it."
            )
        )
    if target in TARGETS:
        t = TARGETS[target]
        expr = parse(t.expression, names)
        source = _source("builtin", t.expression, None, t.name, expr.names)
        log_z = t.log_z if math.isfinite(t.log_z) else None
        return Energy(expr.compile(), expr.names, source, log_z)
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise NfcliError(
                f"The energy file {target} does not exist (or is not a file). Check the path; "
                "to fit an expression instead, pass the formula itself."
            )
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise NfcliError(f"Cannot read the energy file {target}: {e}.") from None
        energy = energy_from_file_text(text, str(path.resolve()), names)
        declared = energy.source.get("conditions")
        if declared and not conditional:
            raise NfcliError(
                f"{target} is a family of targets: it lists CONDITION = {declared} and its "
                f"energy(z, c) takes them. Fit it with their ranges, e.g. nfcli fit {target} "
                + " ".join(f"--condition {n}=LO:HI" for n in declared)
                + ", or write a file without CONDITION."
            )
        return energy
    refuse_names_and_paths(target)
    expr = parse(target, names, constants)
    if check_proper:
        refuse_improper(expr, constants)
    source = _source("expression", target, None, None, expr.names, constants)
    return Energy(expr.compile(), expr.names, source)


def refuse_names_and_paths(target: str) -> None:
    """A TARGET that is a bare name (``my_energy``, ``U1``, ``ringg``) or names a file that is not
    a ``.py`` file was almost surely not meant as the formula U = name: refuse it, with the
    built-in or the file the user probably meant."""
    path_like = os.path.exists(target) or os.path.isfile(target + ".py")
    if not (path_like or _BARE_NAME.fullmatch(target)):
        return
    guesses = [n for n in TARGETS if n.lower() == target.lower()]
    guesses += difflib.get_close_matches(target.lower(), list(TARGETS), n=2, cutoff=0.6)
    guesses += [str(p) for p in _python_files_named(Path(target).name) if str(p) != target]
    if os.path.isfile(target + ".py"):
        guesses.insert(0, target + ".py")
    guesses = list(dict.fromkeys(guesses))
    hint = f"Did you mean {' or '.join(guesses[:3])}? " if guesses else ""
    if os.path.exists(target) and not _BARE_NAME.fullmatch(target):
        what = (
            f"{target} is a {'folder' if os.path.isdir(target) else 'file'}, not a Python energy "
            "file (those end in .py) nor a formula."
        )
    elif os.path.exists(target):
        what = f"{target} names a file here, not a built-in target or a formula."
    elif not _BARE_NAME.fullmatch(target):
        what = f"{target} is not a file, a built-in target or a formula to fit."
    else:
        what = (
            f"{target!r} is not a built-in target, and as a formula it would be U = {target}, "
            "linear in one variable: a density with infinite mass, which cannot be fitted."
        )
    raise NfcliError(
        f"{what} {hint}nfcli targets lists the built-ins ({', '.join(TARGETS)}); a Python file "
        "is given with its .py extension; a formula is written out, e.g. 'x**2/2 + y**2/2'."
    )


def _python_files_named(name: str) -> list[Path]:
    """``name.py`` here or one folder down (not hidden folders): where a user's file would be."""
    if not name or not _BARE_NAME.fullmatch(name):
        return []
    found = [Path(f"{name}.py")] if os.path.isfile(f"{name}.py") else []
    try:
        folders = sorted(p for p in Path(".").iterdir() if p.is_dir() and p.name[0] not in "._")
    except OSError:
        return found
    return found + [p / f"{name}.py" for p in folders[:200] if (p / f"{name}.py").is_file()]


def refuse_improper(expr: Expression, constants: Mapping[str, float] | None = None) -> None:
    """An energy that does not depend on a variable, or is linear in it (U = a·v + b with a, b
    free of v), has ∫ exp(−U) dv = ∞ for every value of the others: p is improper and reverse
    KL would drift without end. Refuse it at once, naming the variable."""
    problems = improper_variables(expr)
    if not problems:
        return
    name, kind = problems[0]
    bound = f" with {', '.join(f'{k}={v:g}' for k, v in constants.items())}" if constants else ""
    why = (
        f"does not depend on {name}, so p is flat along {name}"
        if kind == "absent"
        else f"is linear in {name} (U = a·{name} + b), so exp(−U) grows without bound on one "
        f"side of {name}"
    )
    fix = (
        f"Leave {name} out of --vars, or add a term that confines it, e.g. + {name}**2/2."
        if kind == "absent"
        else f"Add a term that confines {name}, e.g. + {name}**2/2, or if {name} is a constant, "
        f"bind it: {name}=VALUE."
    )
    raise NfcliError(
        f"The energy {_short(expr.text)}{bound} over ({', '.join(expr.names)}), D = "
        f"{len(expr.names)}, {why}: the density has infinite mass (it is improper) and cannot be "
        f"fitted. {fix}"
    )


def _short(text: str, n: int = 80) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= n else text[: n - 1] + "…")


def energy_from_source(source: dict[str, Any], trust: bool = False) -> Energy:
    """Rebuild a checkpoint's Energy. A file energy is stored code: it runs only if ``trust``."""
    check_source(source)
    kind, names = source["kind"], source["vars"]
    if kind == "builtin":
        return load_energy(source["name"], names)
    if kind == "expression":
        return load_energy(source["text"], names, source.get("constants"), check_proper=False)
    if not trust:
        raise NfcliError(
            f"This checkpoint's energy is Python code from {source['path']}; running it means "
            "running that code. Pass --trust if you trust the checkpoint's author."
        )
    return energy_from_file_text(source["text"], source["path"], names)


def energy_from_file_text(text: str, path: str, names: Sequence[str] | None) -> Energy:
    """Run a Python energy file's text as a module and check what it defines."""
    module = types.ModuleType("nfcli_user_energy")
    module.__file__ = path
    try:
        code = compile(text, path, "exec")
    except SyntaxError as e:
        line = (e.text or "").rstrip()
        raise NfcliError(
            f"The energy file {path} has a syntax error on line {e.lineno}: {e.msg}\n  {line}\n"
            "Fix the file and run again."
        ) from None
    try:
        exec(code, module.__dict__)  # the user's own file: documented as running their code
    except (Exception, SystemExit) as e:  # SystemExit: exit() in the file would end nfcli silently
        where = _user_frames(e, path)
        raise NfcliError(
            f"Running the energy file {path} raised {_describe(e)}"
            + (f"\n{where}\n" if where else " ")
            + (_missing_file(e, path) or "Fix the file and run again.")
        ) from None
    fn = getattr(module, "energy", None)
    if not callable(fn):
        raise NfcliError(
            f"The energy file {path} defines no function energy(z). Add one that takes a torch "
            "tensor of shape (N, D) and returns the N energies U(z)."
        )
    file_names = _file_names(module, path)
    conditions = _file_conditions(module, path)
    if conditions and names is not None and len(names) == len(file_names) + len(conditions):
        names = names[: len(file_names)]  # a checkpoint's vars: z's names, then c's
    if names is not None:
        if len(names) != len(file_names):
            raise NfcliError(
                f"--vars gives {len(names)} names but {path} has dimension {len(file_names)}. "
                "Give one name per dimension."
            )
        file_names = tuple(names)
    if conditions:
        D = len(file_names)
        family, fn = fn, lambda zc: family(zc[:, :D], zc[:, D:])
        file_names = (*file_names, *conditions)
    source = _source("file", text, path, None, file_names)
    if conditions:
        source["conditions"] = list(conditions)
    energy = Energy(fn, file_names, source)
    check_energy(energy)
    return energy


def _file_conditions(module: types.ModuleType, path: str) -> tuple[str, ...]:
    """The file's CONDITION names (empty without one)."""
    conditions = getattr(module, "CONDITION", None)
    if conditions is None:
        return ()
    if not (
        isinstance(conditions, (list, tuple))
        and conditions
        and all(isinstance(n, str) and n.isidentifier() for n in conditions)
    ):
        raise NfcliError(
            f"CONDITION in {path} must be a list of condition names, e.g. CONDITION = "
            '["theta"], and energy(z, c) must take them as its second argument.'
        )
    return tuple(conditions)


def _file_names(module: types.ModuleType, path: str) -> tuple[str, ...]:
    names, dim = getattr(module, "NAMES", None), getattr(module, "DIM", None)
    if names is not None:
        if not (isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names)):
            raise NfcliError(f"NAMES in {path} must be a list of strings, one per dimension.")
        if dim is not None and dim != len(names):
            raise NfcliError(
                f"{path} sets DIM = {dim} but lists {len(names)} NAMES; make them agree."
            )
        return tuple(names)
    if isinstance(dim, int) and not isinstance(dim, bool) and dim >= 1:
        return ("x", "y", "z")[:dim] if dim <= 3 else tuple(f"x{i + 1}" for i in range(dim))
    if dim is not None:
        raise NfcliError(
            f"DIM = {dim!r} in {path} is not a dimension: set DIM to a positive integer such "
            "as DIM = 2."
        )
    raise NfcliError(
        f"The energy file {path} does not state its dimension. Add a line such as DIM = 2 "
        '(or NAMES = ["a", "b"]) at the top of the file.'
    )


@torch.no_grad()
def _finite_in_float64(energy: Energy, z: Tensor) -> bool:
    """Whether U is finite at every point of ``z`` when evaluated in float64 (an energy that
    cannot be is taken as not)."""
    if z.dtype == torch.float64:
        return False
    try:
        return bool(torch.isfinite(energy(z.double())).all())
    except Exception:  # a user's energy that only runs in float32
        return False


def undefined_region(energy: Energy, z: Tensor) -> str:
    """Where U is not finite among the points z (N, D) and their mirror images −z, as advice.
    If one variable's sign splits the points where U is finite from those where it is not
    (U = −2·ln(x) + x is NaN for x < 0), say so and how to fit a positive variable; else a
    general hint; '' where U is finite at every point."""
    z = z.detach()
    if not torch.isfinite(energy(z)).all():  # with the mirror images, so that both signs occur
        z = torch.cat([z, -z])
    bad = ~torch.isfinite(energy(z))
    if not bad.any():
        return ""
    for i, name in enumerate(energy.names):
        v = z[:, i]
        for low in (True, False):
            outside, inside = (v <= 0, v > 0) if low else (v >= 0, v < 0)
            if bad.all() or not (bad <= outside).all() or not (~bad <= inside).all():
                continue
            side, other = ("≤ 0", "> 0") if low else ("≥ 0", "< 0")
            sign = "" if low else "−"
            return (
                f"U is not finite where {name} {side} (it is wherever {name} {other}): p lives on "
                f"{name} {other}. Fit an unconstrained variable instead, t = ln({sign}{name}): "
                f"write {name} as {sign}exp(t) and add −t (the log-Jacobian) to U, and transform "
                f"the samples back with {name} = {sign}exp(t). Do not wrap the logarithm in "
                f"Abs(): that puts a mirror image of p at {name} {side}."
            )
    if _finite_in_float64(energy, z[bad]):
        return (
            "U is not finite in part of where q puts samples in float32, and is in float64 (an "
            "overflow or underflow): try --dtype float64, or write U so that its terms stay "
            "within float32's range."
        )
    return (
        "U is not finite in part of where q puts samples, in float64 too (a log or sqrt of a "
        "negative number, a division by zero), so p has no mass there: make U large and finite "
        "rather than undefined where p has no mass (e.g. a Piecewise with a steep wall), or fit "
        "an unconstrained transform of each bounded variable (ln x for x > 0, logit for "
        "0 < x < 1, with the log-Jacobian added to U)."
    )


def check_energy(energy: Energy) -> None:
    """Call U on a small batch and check shape and dtype, reporting the user's frame on error."""
    z = torch.randn(4, energy.dim, generator=torch.Generator().manual_seed(0))
    path = energy.source["path"] or ""
    try:
        u = energy(z)
    except (Exception, SystemExit) as e:
        where = _user_frames(e, path)
        raise NfcliError(
            f"The energy raised {_describe(e)} on a test batch of shape {tuple(z.shape)}"
            + (f"\n{where}\n" if where else ". ")
            + (
                _missing_file(e, path)
                or (f"Fix energy(z) in {path} and run again." if path else "Fix the energy.")
            )
        ) from None
    if not isinstance(u, Tensor) or u.shape != (4,) or not u.is_floating_point():
        got = (
            f"shape {tuple(u.shape)} and dtype {u.dtype}"
            if isinstance(u, Tensor)
            else f"a {_type_name(u)}, not a torch tensor"
        )
        raise NfcliError(
            f"energy(z) must return a floating-point tensor of shape (N,) for z of shape (N, D); "
            f"for N = 4, D = {energy.dim} it returned {got}. Sum over the last axis, e.g. "
            "return (z**2).sum(-1)."
        )


def check_source(source: Any) -> None:
    """A checkpoint's energy record is what ``_source`` writes, or an NfcliError says it is not."""
    kinds = ("builtin", "expression", "file")
    ok = (
        isinstance(source, dict)
        and source.get("kind") in kinds
        and isinstance(source.get("text"), str)
        and isinstance(source.get("vars"), list)
        and all(isinstance(v, str) for v in source["vars"])
        and (source["kind"] != "builtin" or isinstance(source.get("name"), str))
        and (source["kind"] != "file" or isinstance(source.get("path"), str))
        and isinstance(bound := source.get("constants", {}), dict)
        and all(isinstance(k, str) and isinstance(v, float) for k, v in bound.items())
    )
    if not ok:
        raise NfcliError(
            "The checkpoint's energy record is damaged or not one nfcli writes (it needs kind "
            f"{' | '.join(kinds)}, text, vars and name or path). Re-run nfcli fit to make a new "
            "checkpoint."
        )


def _describe(e: BaseException) -> str:
    """An exception as 'Type (message)'; SystemExit as the exit() call it was."""
    if isinstance(e, SystemExit):
        return f"SystemExit (it called exit({e.code!r}) or sys.exit; an energy file must not)"
    return f"{type(e).__name__} ({e})" if str(e) else type(e).__name__


def _missing_file(e: BaseException, path: str) -> str:
    """For a file the energy could not open: where it was looked for and how to make it found
    from any folder ('' for other errors)."""
    if not isinstance(e, FileNotFoundError):
        return ""
    missing = str(e.filename or "")
    if not missing:  # numpy's loadtxt/genfromtxt: FileNotFoundError("data.csv not found.")
        said = re.fullmatch(r"(.+?) not found\.?", str(e.args[0]) if e.args else "")
        missing = said.group(1) if said else ""
    if not missing:
        return ""
    if not os.path.isabs(missing):
        return (
            f"The energy reads {missing}, a path relative to the folder nfcli runs in "
            f"({os.getcwd()}), not to the energy file. Read it beside the file instead, e.g. "
            f"Path(__file__).with_name({Path(missing).name!r}) (__file__ is {path}), or give "
            "an absolute path."
        )
    return (
        f"The energy reads {missing}, which does not exist. A checkpoint stores the energy's "
        f"code, not the data it reads: put the file back at {missing}, or edit the energy to "
        "read it where it is now."
    )


def _type_name(value: object) -> str:
    """'numpy.ndarray', 'float', 'NoneType': what a user's function returned."""
    cls = type(value)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


def _user_frames(e: BaseException, path: str) -> str:
    frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == path]
    return "".join(traceback.format_list(frames)).rstrip() if frames else ""


def _source(
    kind: str,
    text: str,
    path: str | None,
    name: str | None,
    names: Sequence[str],
    constants: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    return {
        "kind": kind,
        "text": text,
        "path": path,
        "name": name,
        "vars": list(names),
        "constants": {k: float(v) for k, v in (constants or {}).items()},
    }
