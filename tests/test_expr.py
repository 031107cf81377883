"""Expressions: compiled energies against hand-written torch (values and gradients), stability at
overflow, variable order, and clear errors for what the whitelist refuses."""

import math

import pytest
import torch

from nfcli.energy import load_energy
from nfcli.errors import NfcliError
from nfcli.expr import CALLED_ONLY, FUNCTIONS, improper_variables, parse

# --- hand-written torch versions of the paper's energies (Rezende & Mohamed 2015, table 1) --------


def w1(z):
    return torch.sin(2 * math.pi * z[:, 0] / 4)


def w2(z):
    return 3 * torch.exp(-0.5 * ((z[:, 0] - 1) / 0.6) ** 2)


def w3(z):
    return 3 * torch.sigmoid((z[:, 0] - 1) / 0.3)


def soft_box(z):
    return -torch.nn.functional.logsigmoid(10 * (5 - z.abs().max(dim=1).values))


def u1(z):
    r = torch.linalg.vector_norm(z, dim=1)
    a = -0.5 * ((z[:, 0] - 2) / 0.6) ** 2
    b = -0.5 * ((z[:, 0] + 2) / 0.6) ** 2
    return 0.5 * ((r - 2) / 0.4) ** 2 - torch.logaddexp(a, b)


def u2(z):
    return 0.5 * ((z[:, 1] - w1(z)) / 0.4) ** 2 + soft_box(z)


def u3(z):
    a = -0.5 * ((z[:, 1] - w1(z)) / 0.35) ** 2
    b = -0.5 * ((z[:, 1] - w1(z) + w2(z)) / 0.35) ** 2
    return -torch.logaddexp(a, b) + soft_box(z)


def u4(z):
    a = -0.5 * ((z[:, 1] - w1(z)) / 0.4) ** 2
    b = -0.5 * ((z[:, 1] - w1(z) + w3(z)) / 0.35) ** 2
    return -torch.logaddexp(a, b) + soft_box(z)


def moons(z):
    a = z[:, 0].abs()
    log_p = (
        -0.5 * ((torch.linalg.vector_norm(z, dim=1) - 2) / 0.2) ** 2
        - 0.5 * ((a - 2) / 0.3) ** 2
        + torch.log(1 + torch.exp(-4 * a / 0.09))
    )
    return -log_p


def _points(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(300, 2, generator=g, dtype=dtype) * 2.5).requires_grad_()


def _value_and_grad(fn, z):
    u = fn(z)
    (g,) = torch.autograd.grad(u.sum(), z)
    return u.detach(), g


@pytest.mark.parametrize(
    "name,reference", [("u1", u1), ("u2", u2), ("u3", u3), ("u4", u4), ("moons", moons)]
)
def test_builtin_energies_match_hand_written_torch(name, reference):
    energy = load_energy(name)
    assert energy.names == ("z1", "z2")
    z = _points()
    u, g = _value_and_grad(energy, z)
    u_ref, g_ref = _value_and_grad(reference, z)
    torch.testing.assert_close(u, u_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "text,reference",
    [
        ("0.5*((sqrt(x**2+y**2)-2)/0.4)**2", lambda x, y: 0.5 * ((torch.hypot(x, y) - 2) / 0.4) ** 2),
        ("x^2/2 + y^4/4", lambda x, y: x**2 / 2 + y**4 / 4),
        ("exp(x) - 3*log(1 + y**2)", lambda x, y: torch.exp(x) - 3 * torch.log(1 + y**2)),
        ("sin(x)*cos(y) + tan(x/4)", lambda x, y: torch.sin(x) * torch.cos(y) + torch.tan(x / 4)),
        ("tanh(x) + sinh(y/3) + cosh(x/3)", lambda x, y: torch.tanh(x) + torch.sinh(y / 3) + torch.cosh(x / 3)),
        ("atan2(y, x) + erf(x)", lambda x, y: torch.atan2(y, x) + torch.erf(x)),
        ("sigmoid(x) + softplus(y)", lambda x, y: torch.sigmoid(x) + torch.nn.functional.softplus(y)),
        ("Abs(x) + Max(x, y, 0.5) - Min(x, 2*y)", lambda x, y: x.abs() + torch.maximum(torch.maximum(x, y), torch.tensor(0.5, dtype=x.dtype)) - torch.minimum(x, 2 * y)),
        ("Piecewise((x**2, x < 0), (x, True)) + y**2", lambda x, y: torch.where(x < 0, x**2, x) + y**2),
        ("Piecewise((1, (x > 0) & (y > 0)), (2, True))*x**2", lambda x, y: torch.where((x > 0) & (y > 0), 1.0, 2.0) * x**2),
        ("pi*x**2 + E*y**2", lambda x, y: math.pi * x**2 + math.e * y**2),
        ("log(x**2 + 1, 10) + y**2", lambda x, y: torch.log10(x**2 + 1) + y**2),
    ],
)  # fmt: skip
def test_expressions_match_hand_written_torch(text, reference):
    expr = parse(text)
    assert expr.names == ("x", "y")
    f = expr.compile()
    z = _points()
    u, g = _value_and_grad(f, z)
    u_ref, g_ref = _value_and_grad(lambda t: reference(t[:, 0], t[:, 1]), z)
    torch.testing.assert_close(u, u_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_of_sum_of_exps_is_stable_at_overflow(dtype):
    """ln(e^{x} + e^{−x}) and ln(1 + e^{y}) where e^{x} overflows (x = 100 in float32, 800 in
    float64) stay finite, with the right gradients tanh(x) and σ(y)."""
    f = parse("log(exp(x) + exp(-x)) + log(1 + exp(y))").compile()
    z = torch.tensor([[40.0, 100.0], [-40.0, -100.0], [800.0, 0.0]], dtype=dtype).requires_grad_()
    u, g = _value_and_grad(f, z)
    x, y = z.detach()[:, 0].double(), z.detach()[:, 1].double()
    expected = torch.logaddexp(x, -x) + torch.nn.functional.softplus(y)
    torch.testing.assert_close(u.double(), expected, rtol=1e-6, atol=1e-5)
    assert torch.isfinite(g).all()
    torch.testing.assert_close(g[:, 0].double(), torch.tanh(x), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g[:, 1].double(), torch.sigmoid(y), rtol=1e-6, atol=1e-6)
    # the naive form really does overflow here, so the rewrite is what makes this pass
    naive = torch.log(torch.exp(z[:, 0]) + torch.exp(-z[:, 0]))
    assert not torch.isfinite(naive[2])


def test_log_sigmoid_is_rewritten_to_softplus():
    f = parse("-log(sigmoid(x)) + y**2").compile()
    z = torch.tensor([[-200.0, 0.0]], requires_grad=True)
    u, g = _value_and_grad(f, z)
    assert u.item() == pytest.approx(200.0)
    assert g[0, 0].item() == pytest.approx(-1.0)


def test_common_subexpressions_are_shared():
    """CSE: sqrt(x²+y²) appears three times but is compiled once (same values either way)."""
    text = "(sqrt(x**2+y**2) - 1)**2 + sin(sqrt(x**2+y**2)) + exp(-sqrt(x**2+y**2))"
    f = parse(text).compile()
    z = _points()
    r = torch.hypot(z[:, 0], z[:, 1])
    torch.testing.assert_close(f(z), (r - 1) ** 2 + torch.sin(r) + torch.exp(-r))


def test_output_has_batch_shape_and_dtype():
    f = parse("x + 0*y").compile()  # SymPy drops 0*y: the energy is constant along y
    for dtype in (torch.float32, torch.float64):
        u = f(torch.zeros(7, 1, dtype=dtype))
        assert u.shape == (7,) and u.dtype == dtype


# --- variable order ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,names",
    [
        ("z + y + x", ("x", "y", "z")),
        ("y**2 + x", ("x", "y")),
        ("x10 + x2 + x1 + x3", ("x1", "x2", "x3", "x10")),
        ("z2 - z1", ("z1", "z2")),
        ("b + a", ("a", "b")),
    ],
)
def test_variables_are_ordered_naturally(text, names):
    assert parse(text).names == names


def test_variable_columns_follow_the_order():
    f = parse("x10 + 100*x2 + 10000*x1").compile()  # columns: x1, x2, x10
    u = f(torch.tensor([[1.0, 2.0, 3.0]]))
    assert u.item() == 10000 * 1 + 100 * 2 + 3


def test_vars_override_order_and_may_add_dimensions():
    expr = parse("x**2 + y", names=["y", "x", "w"])
    assert expr.names == ("y", "x", "w")
    u = expr.compile()(torch.tensor([[5.0, 2.0, 7.0]]))
    assert u.item() == 2.0**2 + 5.0


@pytest.mark.parametrize(
    "names,fragment",
    [
        (["x"], "leaves out y"),
        (["x", "x", "y"], "distinct"),
        (["x", "exp", "y"], "exp"),
    ],
)
def test_vars_that_do_not_match_are_refused(names, fragment):
    with pytest.raises(NfcliError, match=fragment):
        parse("x + y", names=names)


# --- names of functions added later are functions only where called --------------------------

Z = torch.tensor([[2.0, 3.0, 1.5], [-1.0, 0.5, -2.0]], dtype=torch.float64)


def test_beta_uncalled_is_a_variable():
    expr = parse("beta*x + x**2/2")
    assert expr.names == ("beta", "x")
    u = expr.compile()(Z[:, :2])
    torch.testing.assert_close(u, Z[:, 0] * Z[:, 1] + Z[:, 1] ** 2 / 2)


def test_beta_can_be_bound_as_a_constant():
    energy = load_energy("beta*x**2/2", constants={"beta": 2})
    assert energy.names == ("x",)
    torch.testing.assert_close(energy(Z[:, :1]), Z[:, 0] ** 2)


@pytest.mark.parametrize("text", ["x**2 - log(beta(x**2 + 1, 2))", "x**2 + beta (x**2 + 1, 2)"])
def test_a_constant_bound_to_a_name_only_called_is_unused(text):
    with pytest.raises(NfcliError, match=r"binds a constant that the expression .* does not use"):
        parse(text, constants={"beta": 2})


def test_vars_may_list_gamma_and_the_compiled_symbols_do_not_clash_with_the_functions():
    expr = parse("beta*x**2 + gamma", ["beta", "gamma", "x"])
    assert expr.names == ("beta", "gamma", "x")
    u = expr.compile()(Z)
    torch.testing.assert_close(u, Z[:, 0] * Z[:, 2] ** 2 + Z[:, 1])
    # U is linear in beta and gamma: flagged by name, as any variable
    assert improper_variables(expr) == [("beta", "linear"), ("gamma", "linear")]


def test_a_variable_beta_and_the_function_beta_in_one_expression():
    expr = parse("beta*x - log(beta(2, 3))")  # B(2, 3) = 1/12
    assert expr.names == ("beta", "x")
    u = expr.compile()(Z[:, :2])
    torch.testing.assert_close(u, Z[:, 0] * Z[:, 1] + math.log(12))
    # the variable gamma inside the function gamma, and beta bound as a constant beside beta()
    expr = parse("gamma**2/2 + x**2 - log(gamma(gamma**2 + 1))", ["gamma", "x"])
    g, x = Z[:, 0], Z[:, 1]
    want = g**2 / 2 + x**2 - torch.lgamma(g**2 + 1)
    torch.testing.assert_close(expr.compile()(Z[:, :2]), want)
    assert improper_variables(expr) == []
    energy = load_energy("beta*x**2 - log(beta(x**2 + 1, 2))", constants={"beta": 2})
    assert energy.names == ("x",)
    b = torch.exp(torch.lgamma(x**2 + 1) + math.lgamma(2) - torch.lgamma(x**2 + 3))
    torch.testing.assert_close(energy(Z[:, 1:2]), 2 * x**2 - torch.log(b))


def test_a_variable_listed_in_vars_but_only_called_is_absent():
    expr = parse("x**2 - log(beta(x**2 + 1, 2))", ["x", "beta"])
    assert improper_variables(expr) == [("beta", "absent")]


@pytest.mark.parametrize("name", sorted(CALLED_ONLY))
def test_each_name_of_a_called_only_function_is_a_variable_uncalled(name):
    assert name in FUNCTIONS
    expr = parse(f"{name}**2 + x**2")
    assert set(expr.names) == {name, "x"}
    assert parse(f"{name}**2", constants={}).names == (name,)
    assert parse(f"{name}*x**2", constants={name: 3}).names == ("x",)


@pytest.mark.parametrize("name", ["exp", "log", "erf", "sigmoid", "logsumexp", "Abs"])
def test_an_older_function_uncalled_is_still_refused(name):
    message = (
        f"The expression contains the function {name} without arguments at column 1:\n"
        f"  {name}*x + x**2\n  ^\nCall it, as in {name}(x)."
    )
    with pytest.raises(NfcliError) as caught:
        parse(f"{name}*x + x**2")
    assert str(caught.value) == message
    with pytest.raises(NfcliError, match=f"{name}=2 cannot be bound"):
        parse(f"{name}*x + x**2", constants={name: 2})
    with pytest.raises(NfcliError, match=f"problem: {name}"):
        parse("x**2", [name, "x"])


# --- what the whitelist refuses (issue 6 extends this to a full table) ------------------------


@pytest.mark.parametrize(
    "text,fragment",
    [
        ("x +* y", "column 4"),
        ("__import__('os').system('true')", "attribute access"),
        ("exp.__class__", "Attribute"),
        ("foo(x)", "unknown function 'foo'"),
        ("lambda: x", "Lambda"),
        ("[x for x in y]", "ListComp"),
        ("'x' + y", "str literal"),
        ("exp(x=1)", "keyword"),
        ("9**9**9**9", "exceeds 1e300"),
        ("(10**1000)**1000", "exceeds 1e300"),
        ("sqrt(-1) + x", "complex"),
        ("I*x", "imaginary"),
        ("3 + 4", "no variables"),
        ("x < 1", "condition"),
        ("_x + 1", "_"),
    ],
)
def test_refused_expressions_explain_why(text, fragment):
    with pytest.raises(NfcliError, match=fragment):
        parse(text)
