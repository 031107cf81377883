"""Base distributions (``nfcli.bases``): the registry, each base's density against
torch.distributions, and its sampler against its density."""

import math

import pytest
import torch

from nfcli import NfcliError
from nfcli.bases import BASES, DiagonalGaussian, StudentT, build_base
from nfcli.flows import FLOW_TYPES, Flow, architecture


@pytest.fixture(autouse=True)
def float64():
    """These tests compare densities to 1e-10: run them in float64, and restore the default."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


# --- the registry ----------------------------------------------------------------------------


def test_the_gaussian_base_is_still_importable_from_flows_and_is_the_registered_one():
    from nfcli import flows

    assert flows.DiagonalGaussian is DiagonalGaussian is BASES["diagonal_gaussian"]


@pytest.mark.parametrize(
    "spec",
    [{"type": "diagonal_gaussian", "scale": 2.0}, {"type": "student_t", "scale": 2.0, "dof": 7.0}],
)
def test_spec_rebuilds_the_base(spec):
    base = build_base(spec, 3, restarts=2)
    assert base.spec() == spec and base.loc.shape == (2, 3)
    assert base.spec() == build_base(base.spec(), 3, 2).spec()


def test_an_unknown_base_type_is_refused_by_name():
    arch = architecture("planar", 2)
    arch["base"] = {"type": "laplace", "scale": 1.0}
    with pytest.raises(NfcliError, match=r"Unknown base distribution type 'laplace'.*diagonal"):
        Flow(2, arch)


def test_checkpoint_keys_of_a_gaussian_flow_are_unchanged():
    """Checkpoints store the state dict: the base's entries keep their names."""
    keys = set(Flow.of(2, 3, "planar").state_dict())
    assert {"base.loc", "base.log_scale"} <= keys
    assert all(k.startswith("transforms.") for k in keys - {"base.loc", "base.log_scale"})


# --- each base's density ------------------------------------------------------------------------


def reference(base) -> torch.distributions.Distribution:
    """The same distribution (restart r on the leading axis) in torch.distributions."""
    loc, scale = base.loc.detach(), base.log_scale.detach().exp()
    if isinstance(base, StudentT):
        return torch.distributions.StudentT(base.dof.detach(), loc, scale)
    return torch.distributions.Normal(loc, scale)


def randomised(spec: dict, dim: int = 3, restarts: int = 2):
    torch.manual_seed(0)
    base = build_base(spec, dim, restarts)
    with torch.no_grad():
        for p in base.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return base


SPECS = [
    {"type": "diagonal_gaussian", "scale": 1.5},
    {"type": "student_t", "scale": 1.5, "dof": 3.0},  # randomised: ν from about 2.2 to 4.5
]


@pytest.mark.parametrize("spec", SPECS)
def test_log_prob_is_torch_distributions_density(spec):
    base = randomised(spec)
    z = 3 * torch.randn(2, 40, 3)
    expected = reference(base).log_prob(z.transpose(0, 1)).sum(-1).T
    torch.testing.assert_close(base.log_prob(z), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("spec", SPECS)
def test_rsample_log_q_is_log_prob_of_the_draws(spec):
    base = randomised(spec)
    z, log_q = base.rsample(200, torch.Generator().manual_seed(1))
    assert z.shape == (2, 200, 3) and log_q.shape == (2, 200)
    torch.testing.assert_close(log_q, base.log_prob(z), rtol=1e-10, atol=1e-10)
    again, _ = base.rsample(200, torch.Generator().manual_seed(1))
    assert torch.equal(z, again)


@pytest.mark.parametrize("spec", SPECS)
def test_select_takes_out_one_restart_of_the_base(spec):
    arch = architecture("planar", 2)
    arch["base"] = spec
    flow = Flow(3, arch, restarts=3)
    with torch.no_grad():
        for p in flow.base.parameters():
            p.add_(0.5 * torch.randn_like(p))
    z = 2 * torch.randn(3, 25, 3)
    batched = flow.base.log_prob(z)
    for r in range(3):
        single = flow.select(r).base
        torch.testing.assert_close(single.log_prob(z[r : r + 1])[0], batched[r])


@pytest.mark.parametrize("spec", SPECS)
def test_float32_and_float64(spec):
    """The base follows the module's dtype; float64 is density-exact to rounding."""
    base = randomised(spec)
    for dtype, tol in ((torch.float32, 1e-4), (torch.float64, 1e-12)):
        base = base.to(dtype)
        z, log_q = base.rsample(500, torch.Generator().manual_seed(2))
        assert z.dtype == log_q.dtype == dtype and bool(log_q.isfinite().all())
        torch.testing.assert_close(log_q, base.log_prob(z), rtol=tol, atol=tol)


# --- the Student-t base -------------------------------------------------------------------------


def student_density(t: torch.Tensor, nu: float) -> torch.Tensor:
    log_c = math.lgamma((nu + 1) / 2) - math.lgamma(nu / 2) - 0.5 * math.log(nu * math.pi)
    return torch.exp(log_c - (nu + 1) / 2 * torch.log1p(t * t / nu))


def student_expectation(f, nu: float, n: int = 400_001) -> float:
    """E[f(t)], t ~ t_ν, by the trapezoid rule after t = tan θ, θ ∈ (−π/2, π/2), which maps the
    whole line onto a bounded interval where the integrand f(t)·p(t)·(1 + t²) vanishes at both
    ends (for ν > 1 and f growing like ln t)."""
    theta = torch.linspace(-math.pi / 2, math.pi / 2, n)[1:-1]
    t = torch.tan(theta)
    integrand = f(t) * student_density(t, nu) * (1 + t * t)
    return float(torch.trapezoid(integrand, theta))


def test_quadrature_agrees_with_the_closed_form_it_checks_against():
    """E[ln(1 + t²/ν)] = ψ((ν + 1)/2) − ψ(ν/2) (1 + t²/ν = 1/B, B ~ Beta(ν/2, ½))."""
    for nu in (2.5, 5.0, 30.0):
        exact = torch.digamma(torch.tensor((nu + 1) / 2)) - torch.digamma(torch.tensor(nu / 2))
        assert student_expectation(lambda t, nu=nu: torch.log1p(t * t / nu), nu) == pytest.approx(
            float(exact), abs=1e-9
        )


def test_student_t_draws_have_the_variance_and_the_tail_of_the_density():
    """ν = 5: Var z = σ²·ν/(ν − 2) (finite fourth moment, so the sample variance has a standard
    error), and P(|z − loc| > 4σ) against quadrature (about 1%; a Gaussian's is 6e-5)."""
    base = StudentT(2, dof=5.0, restarts=2)
    with torch.no_grad():
        base.loc.copy_(torch.tensor([[1.0, -2.0], [0.0, 3.0]]))
        base.log_scale.copy_(torch.log(torch.tensor([[0.5, 2.0], [1.0, 0.1]])))
    n = 400_000
    z, _ = base.rsample(n, torch.Generator().manual_seed(0))
    sigma, nu = base.log_scale.exp().detach(), 5.0
    var = sigma**2 * nu / (nu - 2)
    mean_se = (var / n).sqrt()
    assert bool(((z.mean(1) - base.loc.detach()).abs() < 5 * mean_se).all())
    fourth = 3 * nu**2 / ((nu - 2) * (nu - 4)) * sigma**4
    var_se = ((fourth - var**2) / n).sqrt()
    assert bool(((z.var(1) - var).abs() < 5 * var_se).all()), (z.var(1), var, var_se)
    u = torch.linspace(0, 1, 200_001)[1:]  # t = 4/u over [4, ∞)
    tail = 2 * float(torch.trapezoid(student_density(4 / u, nu) * 4 / u**2, u))
    beyond = (base.standardise(z).abs() > 4).double().mean(1)
    tail_se = math.sqrt(tail * (1 - tail) / n)
    assert 0.009 < tail < 0.012
    assert bool(((beyond - tail).abs() < 5 * tail_se).all()), (beyond, tail, tail_se)


@pytest.mark.parametrize("nu", [2.5, 8.0])
def test_the_reparametrised_gradient_in_dof_is_the_derivative_of_the_expectation(nu):
    """d/dν E[ln(1 + t²)] estimated through rsample (the gradient of the sample mean, 64
    independent coordinates × 20,000 draws) against the central difference of the same
    expectation computed by quadrature; the coordinates' spread gives the standard error
    (measured: −0.12816 ± 0.00022 against −0.12826 at ν = 2.5, −0.009269 ± 0.000022 against
    −0.009277 at ν = 8; with γ's gradient cut, 0.165 and 0.046)."""
    D, n = 64, 20_000
    base = StudentT(D, dof=nu)
    z, _ = base.rsample(n, torch.Generator().manual_seed(5))
    (grad,) = torch.autograd.grad(torch.log1p(z * z).mean(1).sum(), base.dof_raw)
    per_coordinate = (grad / (base.dof.detach() - 1))[0]  # ν = 1 + eᵖ: dν/dρ = ν − 1
    h = 1e-4

    def expectation(v: float) -> float:
        return student_expectation(lambda t: torch.log1p(t * t), v)

    exact = (expectation(nu + h) - expectation(nu - h)) / (2 * h)
    estimate, se = float(per_coordinate.mean()), float(per_coordinate.std() / math.sqrt(D))
    assert se < 0.05 * abs(exact), (se, exact)  # the test can tell a wrong gradient
    assert abs(estimate - exact) < 4 * se, (estimate, exact, se)


def test_a_generator_gives_the_same_draws_and_leaves_the_global_rng_alone():
    base = StudentT(3, dof=4.0, restarts=2)
    state = torch.get_rng_state()
    a, _ = base.rsample(100, torch.Generator().manual_seed(7))
    b, _ = base.rsample(100, torch.Generator().manual_seed(7))
    c, _ = base.rsample(100, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(3)
    d, _ = base.rsample(100)  # without a generator: the global RNG, as torch.randn
    torch.manual_seed(3)
    assert torch.equal(d, base.rsample(100)[0])


def test_initial_dof_must_be_above_the_minimum():
    with pytest.raises(NfcliError, match="degrees of freedom must be finite and above 1"):
        StudentT(2, dof=1.0)
    assert float(StudentT(2, dof=30.0).dof.detach()[0, 0]) == pytest.approx(30.0, rel=1e-12)


def student_flow(restarts: int = 1) -> Flow:
    """A RealNVP flow on a Student-t base, with every parameter moved off its start (the
    couplings start as the identity)."""
    torch.manual_seed(4)
    arch = architecture("realnvp", 2, base_scale=1.5)
    arch["base"] = {"type": "student_t", "scale": 1.0, "dof": 4.0}
    flow = Flow(3, arch, restarts)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return flow


def test_a_flow_on_a_student_t_base_has_its_exact_density():
    flow = student_flow()
    y, log_q = flow.rsample(300, torch.Generator().manual_seed(1))
    assert y.shape == (300, 3) and bool(log_q.isfinite().all())
    torch.testing.assert_close(flow.log_prob(y), log_q.detach(), rtol=1e-9, atol=1e-9)
    zs, radius = flow.trajectory(50, torch.Generator().manual_seed(1))
    torch.testing.assert_close(zs[-1], flow.sample(50, torch.Generator().manual_seed(1)))
    torch.testing.assert_close(radius, flow.base.standardise(zs[0][None])[0].norm(dim=-1))


def test_a_student_t_flow_survives_its_state_dict_and_select():
    flow = student_flow(restarts=2)
    assert {"base.loc", "base.log_scale", "base.dof_raw"} <= set(flow.state_dict())
    copy = Flow(3, flow.architecture, restarts=2)
    copy.load_state_dict(flow.state_dict())
    y = torch.randn(2, 40, 3)
    torch.testing.assert_close(copy.transform(y), flow.transform(y))
    torch.testing.assert_close(copy.base.log_prob(y), flow.base.log_prob(y))
    one = flow.select(1)
    assert isinstance(one.base, StudentT)
    torch.testing.assert_close(one.base.dof, flow.base.dof[1:2])
    z, log_q = one.rsample(100, torch.Generator().manual_seed(0))
    torch.testing.assert_close(one.log_prob(z), log_q.detach(), rtol=1e-9, atol=1e-9)


# --- architecture(..., base=) -------------------------------------------------------------------


@pytest.mark.parametrize("kind", FLOW_TYPES)
def test_every_flow_type_takes_a_student_t_base_at_the_gaussian_scale(kind):
    gaussian, student = architecture(kind, 2), architecture(kind, 2, base="student_t")
    assert gaussian["base"]["type"] == "diagonal_gaussian"  # the default is unchanged
    assert student["base"] == {"type": "student_t", "scale": gaussian["base"]["scale"], "dof": 30.0}
    assert student["transforms"] == gaussian["transforms"]
    flow = Flow.of(3, 2, kind, base="student_t")
    y, log_q = flow.rsample(20, torch.Generator().manual_seed(0))
    torch.testing.assert_close(flow.log_prob(y), log_q.detach(), rtol=1e-8, atol=1e-8)


def test_an_unknown_base_name_is_refused():
    with pytest.raises(
        NfcliError, match="unknown base 'cauchy'; choose one of gaussian, student_t"
    ):
        architecture("realnvp", 2, base="cauchy")


def test_fitted_alone_to_a_student_t_target_the_base_learns_its_dof():
    """Reverse KL to independent t₄ coordinates, whose optimum is the base with ν = 4, σ = 1,
    at fit's default lr: ν must get there from 30 within the steps of a short fit (in softplus
    space it moved by about lr per step: still 27 after 600 steps)."""
    torch.manual_seed(0)
    base = StudentT(3, dof=30.0)
    opt = torch.optim.Adam(base.parameters(), lr=5e-3)
    for _ in range(600):
        z, log_q = base.rsample(512)
        loss = (log_q + (2.5 * torch.log1p(z * z / 4)).sum(-1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    dof = base.dof.detach()[0]
    assert bool(((dof > 3.3) & (dof < 5)).all()), dof
    torch.testing.assert_close(base.log_scale.detach().exp()[0], torch.ones(3), atol=0.05, rtol=0)
