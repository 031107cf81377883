"""What a fit targets: an energy U(z), p(z) ∝ exp(−U(z)), with its variable names and its source.

A TARGET is one of three things, tried in this order:
  * the name of a built-in (``nfcli targets`` lists them);
  * a path ending in ``.py``: a Python file defining ``energy(z)`` and its dimension (see below);
  * an expression string in SymPy syntax, parsed safely by ``nfcli.expr``.

A Python file is the user's own code and running it runs that code. It must define

    DIM = 2                      # the dimension D (or NAMES = ["a", "b"], which implies D)
    def energy(z):               # z: torch tensor (N, D) → (N,) energies
        ...

and may define ``NAMES`` (one name per column) for axis labels and CSV headers.
"""

from __future__ import annotations

import math
import traceback
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from nfcli.errors import NfcliError
from nfcli.expr import parse
from nfcli.targets import TARGETS


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
        return s["name"] or (Path(s["path"]).name if s["path"] else s["text"])


def load_energy(target: str, names: Sequence[str] | None = None) -> Energy:
    """Resolve a TARGET string (built-in name, ``.py`` path, or expression) to an Energy."""
    target = target.strip()
    if not target:
        raise NfcliError("The target is empty. Give an expression, a .py file or a built-in name.")
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
        return energy_from_file_text(text, str(path), names)
    expr = parse(target, names)
    return Energy(expr.compile(), expr.names, _source("expression", target, None, None, expr.names))


def energy_from_source(source: dict[str, Any], trust: bool = False) -> Energy:
    """Rebuild a checkpoint's Energy. A file energy is stored code: it runs only if ``trust``."""
    check_source(source)
    kind, names = source["kind"], source["vars"]
    if kind == "builtin":
        return load_energy(source["name"], names)
    if kind == "expression":
        return load_energy(source["text"], names)
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
            + "Fix the file and run again."
        ) from None
    fn = getattr(module, "energy", None)
    if not callable(fn):
        raise NfcliError(
            f"The energy file {path} defines no function energy(z). Add one that takes a torch "
            "tensor of shape (N, D) and returns the N energies U(z)."
        )
    file_names = _file_names(module, path)
    if names is not None:
        if len(names) != len(file_names):
            raise NfcliError(
                f"--vars gives {len(names)} names but {path} has dimension {len(file_names)}. "
                "Give one name per dimension."
            )
        file_names = tuple(names)
    source = _source("file", text, path, None, file_names)
    energy = Energy(fn, file_names, source)
    check_energy(energy)
    return energy


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
            + (f"Fix energy(z) in {path} and run again." if path else "Fix the energy.")
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
    kind: str, text: str, path: str | None, name: str | None, names: Sequence[str]
) -> dict[str, Any]:
    return {"kind": kind, "text": text, "path": path, "name": name, "vars": list(names)}
