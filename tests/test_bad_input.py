"""Every way of giving nfcli bad input, in one table: each row must end in exit code 2 and one
paragraph that names the problem (the fragment), with no traceback, no frame of nfcli's own code,
nothing executed that the input smuggled in (canary files stay absent), and no fit started.

A row is (id, argv, fragment). argv is a list, or a function of the row's Workspace for rows that
need files (energy files, configs, damaged checkpoints) made in pytest's tmp_path. The expression
bombs must be refused in well under a second (ROW_SECONDS).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from clitools import assert_refused, run

import nfcli
from nfcli.checkpoint import FORMAT

Argv = list[Any] | Callable[["Workspace"], list[Any]]
Part = Any  # a str, or a function of the Workspace giving a path or str

CANARY = "CANARY"  # the file that a row's hostile input would create if nfcli ran it
NFCLI_SOURCE = str(Path(nfcli.__file__).parent)
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
ROW_SECONDS = {  # rows whose refusal must be fast; every other row gets DEFAULT_SECONDS
    "expr-power-tower": 0.5,
    "expr-power-of-power": 0.5,
    "expr-exp-tower": 0.5,
    "expr-exact-power-near-one": 0.5,
    "expr-exact-coefficient": 0.5,
}
DEFAULT_SECONDS = 30.0


# --- real checkpoints, fitted once per session -------------------------------------------------


@pytest.fixture(scope="session")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real model.pt from a 20-step fit of a 2-D Gaussian: about 15 s on two idle cores, most
    of it the trust report and figures that every fit writes."""
    out = tmp_path_factory.mktemp("fitted")
    result = run("fit", "x**2/2 + y**2/2", "--iters", "20", "--batch", "64", "-o", out, "--force")
    assert result.exit_code == 0, result.output
    return out / "model.pt"


@dataclass(frozen=True)
class FileCheckpoint:
    model: Path
    canary: Path  # created by the stored energy file's module-level code, if it ever runs


@pytest.fixture(scope="session")
def file_fitted(fitted: Path, tmp_path_factory: pytest.TempPathFactory) -> FileCheckpoint:
    """The same fit, recorded as fitted to a Python file with the same density whose first line
    creates a canary file: byte for byte what ``nfcli fit gauss.py`` stores, without a second
    fit (which would also run the canary line)."""
    folder = tmp_path_factory.mktemp("file_fitted")
    canary = folder / "FILE_ENERGY_RAN"
    text = (
        f"open({str(canary)!r}, 'w').close()\n"
        "DIM = 2\n\n\n"
        "def energy(z):\n"
        "    return (z**2).sum(-1) / 2\n"
    )
    data = torch.load(fitted, weights_only=True)
    data["energy"] = {
        "kind": "file",
        "text": text,
        "path": str(folder / "gauss.py"),
        "name": None,
        "vars": ["x", "y"],
    }
    torch.save(data, folder / "model.pt")
    return FileCheckpoint(folder / "model.pt", canary)


# --- what rows are built from ------------------------------------------------------------------


@dataclass
class Workspace:
    """One row's fresh folder, and the session's checkpoints, fetched only by rows that use them."""

    tmp: Path
    request: pytest.FixtureRequest
    canaries: list[Path] = field(default_factory=list)

    @property
    def canary(self) -> Path:
        return self.tmp / CANARY

    @property
    def model(self) -> Path:
        return self.request.getfixturevalue("fitted")

    @property
    def file_model(self) -> Path:
        checkpoint: FileCheckpoint = self.request.getfixturevalue("file_fitted")
        self.canaries.append(checkpoint.canary)
        return checkpoint.model

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        return path


class CreatesCanary:
    """Unpickling this calls open(path, "w"): the code a malicious checkpoint would carry."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return open, (str(self.path), "w")


def nfcli_args(*parts: Part) -> Callable[[Workspace], list[Any]]:
    """argv from parts, each a plain value or a function of the Workspace."""
    return lambda ws: [p(ws) if callable(p) else p for p in parts]


def fit(*parts: Part) -> Callable[[Workspace], list[Any]]:
    """``nfcli fit PARTS`` into the row's folder, with --iters 2 --batch 8 unless the row sets
    them: should a refusal ever not come, the fit that runs instead is tiny."""
    defaults = [("-o", lambda ws: ws.tmp / "out"), ("--iters", "2"), ("--batch", "8")]
    extra = [x for flag, value in defaults if flag not in parts for x in (flag, value)]
    return nfcli_args("fit", *parts, *extra)


def py(name: str, text: str) -> Callable[[Workspace], Path]:
    """A Python energy file in the row's folder."""
    return lambda ws: ws.write(name, text)


def yaml(text: str) -> Callable[[Workspace], Path]:
    return lambda ws: ws.write("run.yaml", text)


def model(ws: Workspace) -> Path:
    return ws.model


def missing(ws: Workspace) -> Path:
    return ws.tmp / "nowhere" / "model.pt"


def truncated(ws: Workspace) -> Path:
    data = ws.model.read_bytes()
    return ws.write("truncated.pt", data[: len(data) // 2])


def random_bytes(ws: Workspace) -> Path:
    return ws.write("random.pt", np.random.default_rng(0).bytes(4096))


def foreign_torch_file(ws: Workspace) -> Path:
    torch.save({"a": 1}, ws.tmp / "foreign.pt")
    return ws.tmp / "foreign.pt"


def newer_version(ws: Workspace) -> Path:
    data = torch.load(ws.model, weights_only=True)
    data["format_version"] = 99
    torch.save(data, ws.tmp / "newer.pt")
    return ws.tmp / "newer.pt"


def write_code_carrying_checkpoint(path: Path, canary: Path) -> Path:
    """A torch file that looks like an nfcli checkpoint and creates ``canary`` when unpickled."""
    torch.save({"format": FORMAT, "format_version": 1, "state_dict": CreatesCanary(canary)}, path)
    return path


def carries_code(ws: Workspace) -> Path:
    return write_code_carrying_checkpoint(ws.tmp / "evil.pt", ws.canary)


def text_file(ws: Workspace) -> Path:
    return ws.write("notes.pt", "hello, I am not a checkpoint\n")


def damaged_energy_record(ws: Workspace) -> Path:
    data = torch.load(ws.model, weights_only=True)
    data["energy"] = {"kind": "expression"}
    torch.save(data, ws.tmp / "damaged.pt")
    return ws.tmp / "damaged.pt"


def file_model(ws: Workspace) -> Path:
    return ws.file_model


def output_is_a_file(ws: Workspace) -> Path:
    return ws.write("taken", "a regular file where the output folder should go")


def read_only_folder(ws: Workspace) -> Path:
    folder = ws.tmp / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    return folder


def folder_named_like_a_file(ws: Workspace) -> Path:
    folder = ws.tmp / "samples.npy"
    folder.mkdir()
    return folder


def points(ws: Workspace) -> Path:
    return ws.write("points.csv", "x,y\n0,0\n1,1\n")


GAUSS = "x**2/2 + y**2/2"
BAD_SYNTAX_FILE = "DIM = 2\n\ndef energy(z):\n    return z[:, 0] +* 2\n"
RAISES_FILE = "DIM = 2\n\ndef energy(z):\n    u = (z**2).sum(-1)\n    return u / undefined_name\n"
NOT_ROOT = pytest.mark.skipif(IS_ROOT, reason="root ignores file permissions")

ROWS: list[tuple[str, Argv, str]] = [
    # --- expressions -------------------------------------------------------------------------
    ("expr-syntax", fit("x +* y"), "not valid syntax (invalid syntax) at column 4: x +* y ^"),
    ("expr-unclosed", fit("exp(x"), "('(' was never closed) at column 4: exp(x ^"),
    ("expr-caret-column", fit("x^^2 + y"), "at column 3: x^^2 + y ^"),
    ("expr-two-lines", fit("(x +\n y +* 2)"), "at column 10: (x + y +* 2) ^"),
    (
        "expr-unknown-function",
        fit("foo(x) + y"),
        "unknown function 'foo' at column 1: foo(x) + y ^ Supported functions: exp, log, ln, sqrt",
    ),
    ("expr-attribute", fit("x.real + y"), "a Python Attribute construct"),
    (
        "expr-dunder-attribute",
        fit("x.__class__.__subclasses__()"),
        "a call of something other than a plain function name (attribute access?)",
    ),
    ("expr-lambda", fit("(lambda: x)()"), "a call of something other than a plain function name"),
    ("expr-lambda-bare", fit("lambda: x"), "a Python Lambda construct"),
    ("expr-list-comprehension", fit("[x for x in y]"), "a Python ListComp construct"),
    ("expr-generator", fit("Max(t for t in x)"), "a Python GeneratorExp construct"),
    ("expr-string", fit("'abc' + x"), "a str literal at column 1"),
    ("expr-f-string", fit("f'{x}'"), "a Python JoinedStr construct"),
    (
        "expr-import-system",
        fit(lambda ws: f"__import__('os').system('touch {ws.canary}')"),
        "a call of something other than a plain function name (attribute access?)",
    ),
    (
        "expr-import",
        fit(lambda ws: f"__import__('pathlib').Path('{ws.canary}').touch()"),
        "attribute access?",
    ),
    (
        "expr-eval",
        fit(lambda ws: f"eval(\"open('{ws.canary}', 'w')\")"),
        "unknown function 'eval'",
    ),
    ("expr-exec", fit(lambda ws: f"exec(\"open('{ws.canary}', 'w')\")"), "unknown function 'exec'"),
    ("expr-open", fit(lambda ws: f"open('{ws.canary}', 'w')"), "unknown function 'open'"),
    ("expr-getattr", fit("getattr(x, 'real')"), "unknown function 'getattr'"),
    ("expr-builtins", fit("x + __builtins__"), "the name '__builtins__' at column 5"),
    ("expr-keyword-argument", fit("exp(x=1)"), "keyword or * arguments to exp"),
    ("expr-starred-argument", fit("Max(*x)"), "keyword or * arguments to Max"),
    ("expr-walrus", fit("(y := x) + x"), "a Python NamedExpr construct"),
    ("expr-statement", fit("x; import os"), "not valid syntax (invalid syntax) at column 2"),
    (
        "expr-too-long",
        fit("x+" * 10_000 + "x"),
        "The expression is 20001 characters long; the limit is 20000",
    ),
    (
        "expr-too-many-nodes",
        fit("Max(" + ",".join(["x"] * 3000) + ")"),
        "The expression has 6004 syntax nodes; the limit is 5000",
    ),
    ("expr-too-deep", fit("exp(" * 61 + "x" + ")" * 61), "nesting deeper than 60 levels"),
    (
        "expr-too-deep-for-python",
        fit("x+" * 5000 + "x"),
        "too large or too deeply nested for Python's parser",
    ),
    ("expr-too-many-brackets", fit("(" * 300 + "x" + ")" * 300), "too many nested parentheses"),
    ("expr-power-tower", fit("9**9**9**9"), "a constant power whose value exceeds 1e300"),
    ("expr-power-of-power", fit("(10**1000)**1000"), "a constant power whose value exceeds 1e300"),
    (
        "expr-exp-tower",
        fit("exp(exp(exp(exp(exp(1))))) + x"),
        "a constant whose value exceeds 1e300 at column 5",
    ),
    (
        "expr-exact-power-near-one",
        fit("(1 + 1/10**20)**(10**25) + x"),
        "an exponent above 1000",
    ),
    ("expr-exact-coefficient", fit("(10*x)**1000"), "a constant whose value exceeds 1e300"),
    ("expr-long-number", fit("1" + "0" * 5000 + " + x"), "a number with thousands of digits"),
    ("expr-complex-constant", fit("sqrt(-1) + x"), "a complex number"),
    ("expr-imaginary-unit", fit("I*x"), "the imaginary unit I"),
    ("expr-complex-comparison", fit("Piecewise((x, x < sqrt(-1)), (0, True))"), "complex number"),
    ("expr-complex-max", fit("Max(x, log(-1))"), "complex number"),
    ("expr-division-by-zero", fit("1/0 + x"), "an infinite or undefined constant"),
    ("expr-no-variables", fit("2+3"), "The expression '2+3' has no variables"),
    ("expr-condition", fit("x < 1"), "is a condition, not a number-valued energy"),
    ("expr-empty", fit("   "), "The target is empty"),
    ("vars-do-not-match", fit(GAUSS, "--vars", "x,z"), "--vars x,z leaves out y"),
    ("vars-repeated", fit(GAUSS, "--vars", "x,x,y"), "(problem: a repeated name)"),
    ("vars-empty-name", fit(GAUSS, "--vars", "x,,y"), "must be comma-separated names"),
    # --- Python energy files -------------------------------------------------------------------
    ("file-missing", fit("missing.py"), "The energy file missing.py does not exist"),
    (
        "file-syntax-error",
        fit(py("bad_syntax.py", BAD_SYNTAX_FILE)),
        "has a syntax error on line 4: invalid syntax return z[:, 0] +* 2",
    ),
    (
        "file-no-energy",
        fit(py("no_energy.py", "DIM = 2\n")),
        "defines no function energy(z)",
    ),
    (
        "file-no-dimension",
        fit(py("no_dim.py", "def energy(z):\n    return z.sum(-1)\n")),
        "does not state its dimension",
    ),
    (
        "file-bad-dimension",
        fit(py("dim0.py", "DIM = 0\n\ndef energy(z):\n    return z.sum(-1)\n")),
        "DIM = 0 in",
    ),
    (
        "file-wrong-shape",
        fit(py("shape.py", "DIM = 2\n\ndef energy(z):\n    return z\n")),
        "it returned shape (4, 2) and dtype torch.float32",
    ),
    (
        "file-int64",
        fit(
            py(
                "int64.py",
                "import torch\nDIM = 2\n\ndef energy(z):\n"
                "    return torch.zeros(len(z), dtype=torch.int64)\n",
            )
        ),
        "it returned shape (4,) and dtype torch.int64",
    ),
    (
        "file-numpy",
        fit(
            py(
                "numpy_out.py",
                "import numpy as np\nDIM = 2\n\ndef energy(z):\n    return np.zeros(len(z))\n",
            )
        ),
        "it returned a numpy.ndarray, not a torch tensor",
    ),
    (
        "file-raises",
        fit(py("raises.py", RAISES_FILE)),
        'raises.py", line 5, in energy return u / undefined_name',
    ),
    (
        "file-import-fails",
        fit(py("imports.py", "import not_a_module_nfcli\nDIM = 2\n")),
        "raised ModuleNotFoundError (No module named 'not_a_module_nfcli')",
    ),
    (
        "file-calls-exit",
        fit(py("exits.py", "import sys\nsys.exit(0)\n")),
        "raised SystemExit (it called exit(0) or sys.exit; an energy file must not)",
    ),
    (
        "file-vars-count",
        fit(py("two.py", "DIM = 2\n\ndef energy(z):\n    return z.sum(-1)\n"), "--vars", "a,b,c"),
        "--vars gives 3 names but",
    ),
    # --- options ---------------------------------------------------------------------------------
    ("K-zero", fit(GAUSS, "--K", "0"), "K = 0 is out of range"),
    ("K-negative", fit(GAUSS, "--K", "-1"), "K = -1 is out of range"),
    ("iters-zero", fit(GAUSS, "--iters", "0"), "iters = 0 is out of range"),
    ("batch-zero", fit(GAUSS, "--batch", "0"), "batch = 0 is out of range"),
    ("lr-zero", fit(GAUSS, "--lr", "0"), "lr = 0.0 is out of range"),
    ("lr-negative", fit(GAUSS, "--lr", "-1"), "lr = -1.0 is out of range"),
    ("lr-nan", fit(GAUSS, "--lr", "nan"), "lr = nan is out of range"),
    ("flow-unknown", fit(GAUSS, "--flow", "maf"), "Unknown flow type 'maf'"),
    (
        "hidden-for-planar",
        fit(GAUSS, "--hidden", "32,32"),
        "--hidden 32,32 does not apply to --flow planar",
    ),
    ("hidden-not-numbers", fit(GAUSS, "--flow", "nice", "--hidden", "64,a"), "hidden: '64,a'"),
    ("hidden-zero", fit(GAUSS, "--flow", "nice", "--hidden", "0"), "must list one or more"),
    ("bins-for-realnvp", fit(GAUSS, "--flow", "realnvp", "--bins", "4"), "--bins 4 does not"),
    ("bins-one", fit(GAUSS, "--flow", "spline", "--bins", "1"), "--bins 1 is out of range"),
    ("K-for-affine", fit(GAUSS, "--flow", "affine", "--K", "3"), "--K 3 does not apply"),
    ("start-unknown", fit(GAUSS, "--start", "sideways"), "Unknown start 'sideways'"),
    ("base-unknown", fit(GAUSS, "--base", "cauchy"), "Unknown base 'cauchy'"),
    ("bins-with-auto", fit(GAUSS, "--bins", "4"), "--bins 4 needs --flow spline"),
    (
        "yaml-converge-not-bool",
        fit(GAUSS, "--config", yaml("converge: maybe\n")),
        "converge: 'maybe' is not true or false",
    ),
    (
        "coupling-in-1d",
        fit("x**2/2", "--flow", "spline"),
        "needs at least 2 of them; this target has 1",
    ),
    (
        "compare-hidden-without-coupling",
        nfcli_args("compare", "u1", "--flow", "planar,radial", "--hidden", "8"),
        "--hidden applies to --flow nice, realnvp, spline, none of which",
    ),
    (
        "yaml-hidden-wrong",
        fit(GAUSS, "--flow", "nice", "--config", yaml("hidden: 1.5\n")),
        "hidden: 1.5",
    ),
    ("dtype-unknown", fit(GAUSS, "--dtype", "float16"), "--dtype 'float16' is not supported"),
    ("device-unknown", fit(GAUSS, "--device", "tpu"), "--device 'tpu' is not a device"),
    ("output-is-a-file", fit(GAUSS, "-o", output_is_a_file), "is an existing file, not a folder"),
    (
        "output-not-writable",
        fit(GAUSS, "-o", read_only_folder),
        "Cannot write to the output folder",
    ),
    ("sample-format", nfcli_args("sample", model, "-o", "x.txt"), "from its extension .txt"),
    ("sample-n-zero", nfcli_args("sample", model, "-n", "0"), "-n 0: the number of samples"),
    ("sample-n-negative", nfcli_args("sample", model, "-n", "-5"), "-n -5: the number of samples"),
    (
        "sample-output-is-a-folder",
        nfcli_args("sample", model, "-o", folder_named_like_a_file),
        "is a folder; give a file name in it",
    ),
    ("yaml-malformed", fit(GAUSS, "--config", yaml("K: [1, 2\n")), "is not valid YAML"),
    (
        "yaml-unknown-key",
        fit(GAUSS, "--config", yaml("K: 4\nlearning_rate: 0.1\n")),
        "has unknown keys: learning_rate. Allowed keys:",
    ),
    ("yaml-wrong-type", fit(GAUSS, "--config", yaml("K: abc\n")), "K: 'abc' is not a valid int"),
    ("yaml-not-a-mapping", fit(GAUSS, "--config", yaml("- K\n- 4\n")), "must be a mapping"),
    (
        "yaml-missing",
        fit(GAUSS, "--config", lambda ws: ws.tmp / "absent.yaml"),
        "Cannot read the config file",
    ),
    # --- checkpoints -----------------------------------------------------------------------------
    ("sample-missing", nfcli_args("sample", missing), "does not exist. Give the model.pt"),
    ("plot-missing", nfcli_args("plot", missing), "does not exist. Give the model.pt"),
    ("report-missing", nfcli_args("report", missing), "does not exist. Give the model.pt"),
    (
        "logprob-missing",
        nfcli_args("logprob", missing, points),
        "does not exist. Give the model.pt",
    ),
    (
        "logprob-points-missing",
        nfcli_args("logprob", model, lambda ws: ws.tmp / "absent.csv"),
        "absent.csv does not exist",
    ),
    ("sample-truncated", nfcli_args("sample", truncated), "not a readable nfcli checkpoint"),
    ("plot-truncated", nfcli_args("plot", truncated), "not a readable nfcli checkpoint"),
    ("sample-text-file", nfcli_args("sample", text_file), "not a readable nfcli checkpoint"),
    ("report-random-bytes", nfcli_args("report", random_bytes), "nfcli checkpoint"),
    (
        "report-random-bytes-says-unreadable",
        nfcli_args("report", random_bytes),
        "not a readable nfcli checkpoint",
    ),
    (
        "logprob-foreign-torch-file",
        nfcli_args("logprob", foreign_torch_file, points),
        "is a torch file but not an nfcli checkpoint",
    ),
    (
        "sample-newer-version",
        nfcli_args("sample", newer_version),
        "has checkpoint format version 99, newer than this nfcli reads",
    ),
    (
        "report-newer-version",
        nfcli_args("report", newer_version),
        "has checkpoint format version 99",
    ),
    (
        "sample-carries-code",
        nfcli_args("sample", carries_code),
        "was refused: it holds Python objects that loading would have to run",
    ),
    ("plot-carries-code", nfcli_args("plot", carries_code), "was refused"),
    ("report-carries-code", nfcli_args("report", carries_code), "was refused"),
    ("logprob-carries-code", nfcli_args("logprob", carries_code, points), "was refused"),
    (
        "resample-file-energy-untrusted",
        nfcli_args(
            "sample", file_model, "--resample", "-n", "10", "-o", lambda ws: ws.tmp / "s.npy"
        ),
        "Pass --trust if you trust the checkpoint's author",
    ),
    (
        "sample-damaged-energy-record",
        nfcli_args("sample", damaged_energy_record, "-o", lambda ws: ws.tmp / "s.npy"),
        "energy record is damaged",
    ),
    (
        "plot-damaged-energy-record",
        nfcli_args("plot", damaged_energy_record, "-o", lambda ws: ws.tmp),
        "energy record is damaged",
    ),
]
ROW_MARKS = {
    "output-not-writable": NOT_ROOT,
}


def test_the_table_is_complete() -> None:
    ids = [row_id for row_id, _, _ in ROWS]
    assert len(ids) == len(set(ids)) and len(ids) >= 45
    assert set(ROW_SECONDS) <= set(ids) and set(ROW_MARKS) <= set(ids)


@pytest.mark.parametrize(
    "argv,fragment",
    [pytest.param(a, f, id=i, marks=ROW_MARKS.get(i, ())) for i, a, f in ROWS],
)
def test_bad_input_is_refused(
    argv: Argv,
    fragment: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ws = Workspace(tmp_path, request)
    args = argv(ws) if callable(argv) else argv
    monkeypatch.chdir(tmp_path)  # anything written by mistake lands in the row's own folder
    start = time.perf_counter()
    result = run(*args)
    seconds = time.perf_counter() - start
    assert_refused(result, fragment)
    assert NFCLI_SOURCE not in result.output, "the message shows nfcli's own frames"
    assert not (tmp_path / "out" / "model.pt").exists(), "a fit ran"
    for canary in [ws.canary, *ws.canaries]:
        assert not canary.exists(), f"the input's code ran and created {canary}"
    limit = ROW_SECONDS.get(request.node.callspec.id, DEFAULT_SECONDS)
    assert seconds < limit, f"refused after {seconds:.2f} s; the limit is {limit} s"


# --- the payloads above are live, and plain sampling of a file energy runs no code ---------------


def test_the_code_carrying_checkpoint_would_create_its_canary(tmp_path: Path) -> None:
    """Without weights_only, loading the row's checkpoint does run its code: the rows that find
    no canary file test a refusal, not a dud."""
    canary = tmp_path / CANARY
    torch.load(write_code_carrying_checkpoint(tmp_path / "evil.pt", canary), weights_only=False)
    assert canary.exists()


def test_a_file_energy_checkpoint_samples_without_running_its_code(
    file_fitted: FileCheckpoint, tmp_path: Path
) -> None:
    result = run("sample", file_fitted.model, "-n", "50", "-o", tmp_path / "s.npy")
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "s.npy").shape == (50, 2)
    refused = run("sample", file_fitted.model, "--resample", "-n", "50", "-o", tmp_path / "r.npy")
    assert_refused(refused, "--trust")
    assert not file_fitted.canary.exists()
    # with --trust the stored code does run, canary line included: the check above can fail
    trusted = run(
        "sample", file_fitted.model, "--resample", "--trust", "-n", "50", "--pool", "500",
        "-o", tmp_path / "t.npy",
    )  # fmt: skip
    try:
        assert trusted.exit_code == 0, trusted.output
        assert file_fitted.canary.exists()
    finally:
        file_fitted.canary.unlink(missing_ok=True)


# --- an option a command does not have: every command, one paragraph (issue 28, item 8) ---------


def _commands() -> list[str]:
    import typer.main

    from nfcli.cli import app

    return sorted(typer.main.get_command(app).commands)


@pytest.mark.parametrize("command", _commands())
def test_every_command_explains_an_option_it_does_not_have(command):
    result = run(command, "--seeed", "1")
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert f"nfcli {command} does not understand --seeed" in text and "--help lists them" in text
    assert "No such option" not in text and "╭" not in text


@pytest.mark.parametrize(
    ("args", "close"),
    [(["sample", "m.pt", "--n", "10"], "-n"), (["plot", "m.pt", "--dpii", "3"], "--dpi")],
)
def test_the_closest_option_is_named(args, close):
    result = run(*args)
    assert result.exit_code == 2 and f"(did you mean {close}?)" in result.output
