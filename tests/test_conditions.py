"""Families of targets: conditions and their ranges, --at values, U(z; c) against hand-written
torch, and every refusal's message."""

import math

import pytest
import torch

from nfcli.conditions import (
    Condition,
    load_conditional_energy,
    parse_at,
    parse_condition,
    parse_conditions,
)
from nfcli.energy import load_energy
from nfcli.errors import NfcliError

THETA = [Condition("theta", -math.pi, math.pi)]


def rotation(theta: float) -> torch.Tensor:
    c, s = math.cos(theta), math.sin(theta)
    return torch.tensor([[c, -s], [s, c]], dtype=torch.float64)


@pytest.mark.parametrize("theta", [0.0, 0.7, -2.5, math.pi])
def test_u1_rotated_is_u1_of_the_point_rotated_back(theta):
    """p_θ(z) = p_U1(R(−θ) z): U of the family at θ equals U1 at R(θ)ᵀ z."""
    family = load_conditional_energy("u1_rotated", [])
    u1 = load_energy("u1")
    z = torch.randn(50, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = u1(z @ rotation(theta))  # rows zᵀ R = (Rᵀ z)ᵀ = (R(−θ) z)ᵀ
    got = family(z, torch.tensor([theta], dtype=torch.float64))
    torch.testing.assert_close(got, expected, atol=1e-9, rtol=1e-9)
    assert family.names == ("z1", "z2") and family.dim == 2


def test_a_batch_of_conditions_each_with_its_draws():
    """U(z; c) for z (M, N, D) and c (M, C): row m of z is evaluated at c_m."""
    energy = load_conditional_energy(
        "(x - m)**2/2 + (y*s)**2/2", parse_conditions(["m=-1:1", "s=1:2"])
    )
    z = torch.randn(3, 4, 2, dtype=torch.float64)
    c = torch.tensor([[0.0, 1.0], [1.0, 2.0], [-1.0, 1.5]], dtype=torch.float64)
    expected = (z[..., 0] - c[:, :1]) ** 2 / 2 + (z[..., 1] * c[:, 1:]) ** 2 / 2
    torch.testing.assert_close(energy(z, c), expected)
    assert energy.names == ("x", "y") and [k.name for k in energy.conditions] == ["m", "s"]


def test_at_binds_the_conditions_as_constants():
    energy = load_conditional_energy("(x - m)**2/2", parse_conditions(["m=-1:1"]))
    bound = energy.at(torch.tensor([0.5]))
    z = torch.tensor([[1.5], [0.5]], dtype=torch.float64)
    torch.testing.assert_close(bound(z), torch.tensor([0.5, 0.0], dtype=torch.float64))
    assert bound.names == ("x",) and "m=0.5" in bound.label


def test_at_values_and_grids():
    conds = parse_conditions(["a=0:1", "b=-2:2"])
    grid = parse_at("a=0:1:3,b=2", conds)
    expected = [[0.0, 2.0], [0.5, 2.0], [1.0, 2.0]]
    torch.testing.assert_close(grid, torch.tensor(expected, dtype=torch.float64))
    assert parse_at("b=1, a=0.25", conds).tolist() == [[0.25, 1.0]]  # the fit's order
    assert parse_at("theta=4", THETA, extrapolate=True).tolist() == [[4.0]]


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("theta=4", "outside the range the flow was trained on, theta in [-3.14159, 3.14159]"),
        ("phi=1", "phi is not a condition of this fit; its conditions are theta=-3.14159:3.14159"),
        ("theta=0,theta=1", "theta is given twice"),
        ("theta=1:2", "write a value or LO:HI:N"),
        ("theta=-1:1:1", "N in LO:HI:N must be a whole number ≥ 2"),
        ("theta=abc", "'abc' is not a number"),
        ("0.7", "write NAME=VALUE or NAME=LO:HI:N"),
    ],
)
def test_bad_at_is_refused_with_what_is_expected(text, fragment):
    with pytest.raises(NfcliError) as e:
        parse_at(text, THETA)
    assert fragment in str(e.value)


def test_every_condition_needs_a_value():
    with pytest.raises(NfcliError) as e:
        parse_at("a=0.5", parse_conditions(["a=0:1", "b=0:1"]))
    assert "does not give b" in str(e.value) and "a=0:1, b=0:1" in str(e.value)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("theta", "write NAME=LO:HI"),
        ("theta=1:0", "LO < HI"),
        ("theta=0:inf", "must be finite"),
        ("2x=0:1", "write NAME=LO:HI"),
    ],
)
def test_bad_condition_is_refused(text, fragment):
    with pytest.raises(NfcliError) as e:
        parse_condition(text)
    assert fragment in str(e.value)


def test_conditions_must_be_variables_of_the_target_and_leave_some_z():
    with pytest.raises(NfcliError, match="no variable of that name; its variables are x, y"):
        load_conditional_energy("x**2 + y**2", parse_conditions(["t=0:1"]))
    with pytest.raises(NfcliError, match="nothing left to sample"):
        load_conditional_energy("x**2", parse_conditions(["x=0:1"]))
    with pytest.raises(NfcliError, match="given twice"):
        parse_conditions(["a=0:1", "a=0:2"])
    with pytest.raises(NfcliError, match="needs at least one condition"):
        load_conditional_energy("x**2 + y**2", [])


FAMILY_FILE = """
NAMES = ["x", "y"]
CONDITION = ["m", "s"]

def energy(z, c):
    return 0.5 * ((z[:, 0] - c[:, 0]) / c[:, 1]) ** 2 + 0.5 * z[:, 1] ** 2
"""


def test_a_python_file_family_takes_its_conditions_as_a_second_argument(tmp_path):
    path = tmp_path / "fam.py"
    path.write_text(FAMILY_FILE)
    energy = load_conditional_energy(str(path), parse_conditions(["s=0.5:2", "m=-1:1"]))
    assert energy.names == ("x", "y") and [c.name for c in energy.conditions] == ["m", "s"]
    z = torch.tensor([[1.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    c = torch.tensor([[0.5, 2.0], [1.0, 0.5]], dtype=torch.float64)
    expected = torch.tensor([0.5 * 0.25**2 + 2.0, 0.5 * 4.0], dtype=torch.float64)
    torch.testing.assert_close(energy(z[:, None], c)[:, 0], expected)
    assert energy.energy.source["conditions"] == ["m", "s"]


@pytest.mark.parametrize(
    "conditions, fragment",
    [
        (["m=-1:1"], "--condition must give a range for each of them"),
        (["m=-1:1", "s=1:2", "t=0:1"], "(it gave m, s, t)"),
    ],
)
def test_a_file_familys_conditions_must_all_have_ranges(tmp_path, conditions, fragment):
    path = tmp_path / "fam.py"
    path.write_text(FAMILY_FILE)
    with pytest.raises(NfcliError) as e:
        load_conditional_energy(str(path), parse_conditions(conditions))
    assert fragment in str(e.value)


def test_a_file_family_is_refused_as_one_target_and_a_plain_file_as_a_family(tmp_path):
    family, plain = tmp_path / "fam.py", tmp_path / "one.py"
    family.write_text(FAMILY_FILE)
    plain.write_text("DIM = 1\n\ndef energy(z):\n    return z[:, 0] ** 2 / 2\n")
    with pytest.raises(NfcliError, match="is a family of targets: it lists CONDITION"):
        load_energy(str(family))
    with pytest.raises(NfcliError, match="lists no CONDITION, so it is one target"):
        load_conditional_energy(str(plain), parse_conditions(["m=0:1"]))
    family.write_text(FAMILY_FILE.replace('["m", "s"]', '"m"'))
    with pytest.raises(NfcliError, match=r"CONDITION in .* must be a list of condition names"):
        load_conditional_energy(str(family), parse_conditions(["m=0:1"]))


def test_the_two_condition_example_is_normalised_at_every_condition():
    """examples/banana_family.py says ln Z = 0 for every (b, s): quadrature agrees."""
    from pathlib import Path

    from nfcli.diagnostics import quadrature

    path = Path(__file__).parent.parent / "examples" / "banana_family.py"
    energy = load_conditional_energy(str(path), parse_conditions(["b=0:2", "s=0.3:1"]))
    for b, s in [(0.0, 1.0), (2.0, 0.3), (1.0, 0.5)]:
        grid = quadrature(energy.at(torch.tensor([b, s])), ((-8.0, 8.0), (-12.0, 40.0)), 1500)
        assert grid.log_z == pytest.approx(0.0, abs=2e-3), (b, s)
