"""What a new user did in the first hour (issue 11), each as a test that failed before the fix:
names read as formulas, constants read as variables, misleading advice, file energies away from
their folder, resume against another target, and the small things (help, carets, overwrites)."""

import math
import os

import numpy as np
import pytest
import torch
from clitools import assert_refused, run

from nfcli.checkpoint import load_checkpoint
from nfcli.energy import Energy, load_energy, undefined_region
from nfcli.errors import NfcliError
from nfcli.expr import parse

QUICK = ("--iters", "30", "--K", "2", "--batch", "64")


# --- names read as formulas ------------------------------------------------------------------


@pytest.mark.parametrize(
    "target, fragment",
    [
        ("U1", "Did you mean u1?"),
        ("ringg", "Did you mean ring or ring8?"),
        ("my_energy", "'my_energy' is not a built-in target"),
        ("funnel", "Did you mean examples/funnel.py?"),  # the tests run in the repository root
        ("examples/funnel", "examples/funnel is not a file, a built-in target or a formula"),
    ],
)
def test_a_bare_name_is_refused_with_what_was_meant(target, fragment):
    assert_refused(run("fit", target, *QUICK, "-o", "/nonexistent-never-written"), fragment)


def test_a_python_file_named_without_its_extension_is_suggested(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_energy.py").write_text("DIM = 1\ndef energy(z):\n    return z[:, 0]**2\n")
    result = run("fit", "my_energy", *QUICK)
    assert_refused(result, "Did you mean my_energy.py?")
    assert not (tmp_path / "model.pt").exists()


def test_a_data_file_given_as_target_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.csv").write_text("1,2\n")
    assert_refused(run("fit", "data.csv", *QUICK), "data.csv is a file, not a Python energy file")


@pytest.mark.parametrize(
    "text, names, fragment",
    [
        ("x**2/2 - y", None, "is linear in y"),
        ("x**2/2 + x*y", None, "is linear in y"),  # linear with a coefficient in x: still improper
        ("x**2/2", ["x", "y"], "does not depend on y"),
    ],
)
def test_a_target_flat_or_linear_in_a_variable_is_refused_at_once(text, names, fragment):
    with pytest.raises(NfcliError) as refused:
        load_energy(text, names)
    message = " ".join(str(refused.value).split())
    assert fragment in message and "improper" in message


@pytest.mark.parametrize(
    "text",
    ["x**2/2 + y**2/2", "abs(x) + 2*log(cosh(y))", "log(cosh(x)) + y**4", "(1 + y**2)*x**2 + y**2"],
)
def test_proper_targets_are_not_refused(text):
    assert load_energy(text).dim == 2


# --- constants read as variables ---------------------------------------------------------------

STUDENT = "(nu+1)/2*log(1 + x**2/nu)"


def test_constants_are_bound_on_the_command_line_and_stored(tmp_path):
    result = run("fit", STUDENT, "nu=3", *QUICK, "-o", tmp_path)
    assert result.exit_code == 0, result.output
    assert "over (x), D = 1" in " ".join(result.output.split())  # the variables are shown
    ckpt = load_checkpoint(tmp_path / "model.pt")
    assert ckpt.names == ("x",) and ckpt.energy_source["constants"] == {"nu": 3.0}
    z = torch.linspace(-3, 3, 7)[:, None]
    energy = load_energy(STUDENT, constants={"nu": 3})
    torch.testing.assert_close(energy(z), 2 * torch.log(1 + z[:, 0] ** 2 / 3))


def test_const_option_and_yaml_bind_constants(tmp_path):
    result = run("fit", STUDENT, "--const", "nu=5", *QUICK, "-o", tmp_path / "a")
    assert result.exit_code == 0, result.output
    assert load_checkpoint(tmp_path / "a/model.pt").energy_source["constants"] == {"nu": 5.0}
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"target: '{STUDENT}'\nconst:\n  nu: 4\n")
    result = run("fit", "--config", cfg, *QUICK, "-o", tmp_path / "b")
    assert result.exit_code == 0, result.output
    assert load_checkpoint(tmp_path / "b/model.pt").energy_source["constants"] == {"nu": 4.0}


@pytest.mark.parametrize(
    "args, fragment",
    [
        ((STUDENT, "nu=abc"), "the value of a constant must be a number"),
        (("x**2/2", "nu=3"), "binds a constant that the expression 'x**2/2' does not use"),
        ((STUDENT, "nu=3", "--vars", "nu,x"), "is both bound as a constant"),
        (("u1", "nu=3"), "apply only to expressions"),
    ],
)
def test_bad_constants_are_refused(args, fragment):
    assert_refused(run("fit", *args, *QUICK, "-o", "/nonexistent-never-written"), fragment)


def test_e_is_not_silently_a_variable():
    with pytest.raises(NfcliError, match="not Euler's number"):
        parse("e**x")
    assert parse("e**x", ["e", "x"]).names == ("e", "x")  # a variable only when listed
    assert parse("E**x").names == ("x",)


def test_a_student_t_without_its_constant_names_the_surprising_variable(tmp_path):
    result = run("fit", "(nu+1)/2*log(1 + x**2/nu) + nu**2", *QUICK, "-o", tmp_path)
    # nu is a variable here; the start line says so before anything else happens
    assert "(nu, x), D = 2" in " ".join(result.output.split())


# --- advice that misleads ------------------------------------------------------------------------


def test_a_log_of_a_positive_variable_gets_reparametrisation_advice_not_abs():
    energy = load_energy("-(2*log(x) - x)")  # a Gamma(3, 1) on x > 0
    z = torch.linspace(-3, 3, 61)[:, None]
    advice = undefined_region(energy, z)
    assert "not finite where x ≤ 0" in advice and "t = ln(x)" in advice
    assert "Do not wrap the logarithm in Abs()" in advice
    # the same when every point lies where U is undefined (the mirror images find the support)
    assert "t = ln(x)" in undefined_region(energy, -torch.rand(50, 1) - 0.1)
    negative = load_energy("-2*log(-y) - y + x**2/2")
    assert "where y ≥ 0" in undefined_region(negative, torch.randn(200, 2))
    assert undefined_region(load_energy("x**2/2"), z) == ""


def test_the_fit_of_a_positive_variable_warns_with_that_advice(tmp_path):
    result = run("fit", "x - 2*log(x)", "--iters", "60", "--K", "2", "-o", tmp_path)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "t = ln(x)" in text and "log(Abs" not in text


# --- python-file energies away from their folder ---------------------------------------------

BESIDE = """from pathlib import Path
DIM = 1
SCALE = float(Path(__file__).with_name("scale.txt").read_text())
def energy(z):
    return 0.5 * (z[:, 0] / SCALE) ** 2
"""


def test_a_file_energy_reading_beside_itself_runs_from_any_folder(tmp_path, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    (project / "scale.txt").write_text("1.5\n")
    (project / "model.py").write_text(BESIDE)
    monkeypatch.chdir(tmp_path)
    result = run("fit", "project/model.py", *QUICK, "-o", "run")
    assert result.exit_code == 0, result.output
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    model = tmp_path / "run/model.pt"
    result = run("sample", model, "--resample", "--trust", "-n", "10", "-o", "a.npy")
    assert result.exit_code == 0, result.output
    (project / "scale.txt").unlink()
    result = run("sample", model, "--resample", "--trust", "-n", "10", "-o", "b.npy")
    assert_refused(result, f"The energy reads {project / 'scale.txt'}, which does not exist")


def test_a_relative_data_path_is_explained(tmp_path, monkeypatch):
    (tmp_path / "rel.py").write_text(
        'DIM = 1\nS = float(open("s.txt").read())\ndef energy(z):\n    return z[:, 0]**2\n'
    )
    (tmp_path / "s.txt").write_text("2")
    monkeypatch.chdir("/")
    result = run("fit", tmp_path / "rel.py", *QUICK)
    assert_refused(result, "a path relative to the folder nfcli runs in")
    assert "Path(__file__).with_name('s.txt')" in result.output


@pytest.mark.parametrize(
    "read", ["np.loadtxt('data.csv')", "np.genfromtxt('data.csv')", "np.load('data.npy')"]
)
def test_a_relative_data_path_read_with_numpy_is_explained(tmp_path, monkeypatch, read):
    """numpy's text readers raise FileNotFoundError('data.csv not found.') with no filename:
    the hint is the same as for open()."""
    (tmp_path / "np_rel.py").write_text(
        f"import numpy as np\nDIM = 1\nS = {read}\ndef energy(z):\n    return z[:, 0]**2\n"
    )
    monkeypatch.chdir("/")
    result = run("fit", tmp_path / "np_rel.py", *QUICK)
    assert_refused(result, "a path relative to the folder nfcli runs in")
    name = read.split("'")[1]
    assert f"Path(__file__).with_name({name!r})" in result.output


# --- resume against another target ---------------------------------------------------------------


@pytest.fixture(scope="module")
def u1_fit(tmp_path_factory):
    out = tmp_path_factory.mktemp("u1")
    result = run("fit", "u1", *QUICK, "-o", out)
    assert result.exit_code == 0, result.output
    return out / "model.pt"


def test_resume_with_another_target_is_refused_before_anything_else(u1_fit):
    # no --iters: before, the 'all it was asked for' error hid that u2 is not u1's energy
    assert_refused(run("fit", "u2", "--resume", u1_fit), "u2 (D = 2) is not the energy")


def test_resume_with_a_target_of_another_dimension_names_it(u1_fit):
    result = run("fit", "x**2/2", "--resume", u1_fit, "--iters", "40")
    assert_refused(result, "x**2/2 (D = 1) is not the energy")
    assert "--vars" not in result.output  # the user never gave one


# --- small things ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command", ["fit", "compare", "sample", "logprob", "plot", "report", "summary"]
)
def test_help_shows_no_type_for_flags_and_one_style_of_default(command):
    result = run(command, "--help")
    assert result.exit_code == 0
    assert "<bool>" not in result.output
    assert "{model}" not in result.output and "{targets}" not in result.output
    assert "[default:" not in result.output  # all defaults read "(default: …)"


def test_the_caret_points_at_the_end_of_an_unfinished_expression():
    with pytest.raises(NfcliError) as refused:
        parse("x**2/2 + y*")
    lines = str(refused.value).splitlines()
    assert lines[1] == "  x**2/2 + y*" and lines[2] == "  " + " " * len("x**2/2 + y*") + "^"
    assert "at column 12" in lines[0]


def test_sample_does_not_replace_a_file_without_force(u1_fit, tmp_path):
    target = tmp_path / "samples.npy"
    np.save(target, np.zeros(3))
    assert_refused(run("sample", u1_fit, "-o", target, "-n", "5"), "already exists")
    assert np.load(target).shape == (3,)  # untouched
    result = run("sample", u1_fit, "-o", target, "-n", "5", "--force")
    assert result.exit_code == 0 and np.load(target).shape == (5, 2)


def test_sample_says_one_variable(tmp_path):
    assert run("fit", "x**2/2", *QUICK, "-o", tmp_path).exit_code == 0
    result = run("sample", tmp_path / "model.pt", "-o", tmp_path / "s.csv", "-n", "4")
    assert "of 1 variable to" in result.output


def test_logprob_refuses_a_csv_header_that_names_other_variables(u1_fit, tmp_path):
    points = tmp_path / "p.csv"
    points.write_text("a,b\n0,0\n")
    assert_refused(run("logprob", u1_fit, points), "names the columns a, b")
    points.write_text("z2,z1\n0,0\n")
    assert_refused(run("logprob", u1_fit, points), "in that order")
    points.write_text("z1,z2\n0,0\n")
    result = run("logprob", u1_fit, points)
    assert result.exit_code == 0 and math.isfinite(float(result.stdout.splitlines()[1]))


def test_energy_labels_show_bound_constants():
    energy = load_energy(STUDENT, constants={"nu": 3})
    assert isinstance(energy, Energy) and energy.label == f"{STUDENT} nu=3"
    assert os.path.isabs(load_energy("examples/funnel.py").source["path"])


def test_the_readme_sequence_fit_then_sample_in_one_folder_works(tmp_path, monkeypatch):
    """README: nfcli fit … then nfcli sample model.pt, in the same folder: the draws go to
    draws.npy and the fit's samples.npy is left as it was."""
    monkeypatch.chdir(tmp_path)
    assert run("fit", "x**2/2 + y**2/2", *QUICK).exit_code == 0
    before = np.load("samples.npy")
    result = run("sample", "model.pt", "-n", "100")
    assert result.exit_code == 0, result.output
    assert np.load("draws.npy").shape == (100, 2)
    np.testing.assert_array_equal(np.load("samples.npy"), before)
