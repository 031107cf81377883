"""Conditional flows (``nfcli.conditional``): at a fixed condition the conditional flow is the plain
flow at ψ(c), its log-determinants match autograd Jacobians, ln q(·|c) integrates to 1 at each c,
it survives a checkpoint, and it starts as the unconditional flow's init, for every flow recipe
(every layer type of the registry and every base)."""

from __future__ import annotations

import io
import json
import math

import pytest
import torch
from torch.autograd.functional import jacobian

from nfcli.bases import BASES
from nfcli.conditional import ConditionalFlow
from nfcli.diagnostics import cell_volume, grid_points
from nfcli.errors import NfcliError
from nfcli.flows import FLOW_TYPES, Flow, architecture
from nfcli.transforms import REGISTRY

LO, HI = [-1.0, 0.0], [1.0, 2.0]  # C = 2 condition variables


def _recipe(flow: str, dim: int, **options) -> tuple[int, dict]:
    K = {"planar": 4, "radial": 4, "affine": 1}.get(flow, 2)
    arch = architecture(flow, K, 0.5, 1.0, hidden=[8, 8], bins=4, dim=dim, **options)
    return dim, arch


RECIPES = {
    **{f"{flow}-{dim}d": _recipe(flow, dim) for flow in FLOW_TYPES for dim in (2, 3)},
    **{f"{flow}-1d": _recipe(flow, 1) for flow in ("planar", "radial", "affine")},
    "nice-permutation-3d": _recipe("nice", 3, mixing="permutation"),
    "realnvp-reverse-2d": _recipe("realnvp", 2, mixing="reverse"),
    "spline-mode-student-2d": _recipe("spline", 2, start="mode", base="student_t"),
    "planar-mode-3d": _recipe("planar", 3, start="mode"),
    "realnvp-modes-2d": _recipe("realnvp", 2, start="mode", components=3),
}
LOW_DIM = [name for name, (dim, _) in RECIPES.items() if dim <= 2]


def _conditions(M: int, seed: int) -> torch.Tensor:
    """M conditions (M, 2) in the range LO..HI."""
    u = torch.rand(M, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return torch.tensor(LO) + u * (torch.tensor(HI) - torch.tensor(LO))


def _fitted(name: str, spread: float = 0.05) -> ConditionalFlow:
    """The recipe's conditional flow in float64, with its hypernetwork's last layer drawn at random
    (so that q depends on c, as after a fit), started at a Gaussian for a 'mode' recipe."""
    dim, arch = RECIPES[name]
    torch.manual_seed(0)
    cf = ConditionalFlow(dim, arch, LO, HI, hidden=(16,)).double()
    with torch.no_grad():
        cf.net[-1].weight.normal_(0.0, spread)
    if arch["transforms"][-1]["type"] == "fixed_affine":
        a = torch.randn(dim, dim, dtype=torch.float64) * 0.3
        cf.start_at(torch.linspace(-0.5, 0.5, dim), a @ a.T + 0.5 * torch.eye(dim))
    return cf


def test_the_recipes_cover_every_layer_type_and_every_base():
    layers = {t["type"] for _, arch in RECIPES.values() for t in arch["transforms"]}
    bases = {arch["base"]["type"] for _, arch in RECIPES.values()}
    assert layers == set(REGISTRY)
    assert bases == set(BASES)


@pytest.mark.parametrize("name", RECIPES)
def test_a_fixed_condition_is_the_plain_flow_at_it(name):
    """Each row of a batch of conditions is the plain Flow ``at`` its condition: the same
    transform, log-det, inverse and ln q, and the same draws from the same base noise."""
    cf = _fitted(name)
    c = _conditions(3, seed=1)
    z0 = torch.randn(3, 7, cf.dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y, log_det = cf.transform(c, z0)
    back, log_det_back = cf.inverse(c, y)
    log_q = cf.log_prob(c, y)
    for m in range(3):
        flow = cf.at(c[m])
        assert isinstance(flow, Flow) and flow.restarts == 1
        y_m, log_det_m = flow.transform(z0[m : m + 1])
        torch.testing.assert_close(y[m : m + 1], y_m, atol=1e-10, rtol=0)
        torch.testing.assert_close(log_det[m : m + 1], log_det_m, atol=1e-10, rtol=0)
        back_m, log_det_back_m = flow.inverse(y_m)
        torch.testing.assert_close(back[m : m + 1], back_m, atol=1e-10, rtol=0)
        torch.testing.assert_close(log_det_back[m : m + 1], log_det_back_m, atol=1e-10, rtol=0)
        torch.testing.assert_close(log_q[m], flow.log_prob(y_m[0]), atol=1e-10, rtol=0)
        drawn = cf.rsample(c[m : m + 1], 5, torch.Generator().manual_seed(3))
        plain = flow.rsample(5, torch.Generator().manual_seed(3))
        torch.testing.assert_close(drawn[0][0], plain[0], atol=1e-10, rtol=0)
        torch.testing.assert_close(drawn[1][0], plain[1], atol=1e-10, rtol=0)
    torch.testing.assert_close(back, z0, atol=1e-8, rtol=0)
    torch.testing.assert_close(log_det_back, -log_det, atol=1e-8, rtol=0)
    z, log_q_drawn = cf.rsample(c, 11, torch.Generator().manual_seed(4))
    torch.testing.assert_close(cf.log_prob(c, z), log_q_drawn, atol=1e-8, rtol=0)


@pytest.mark.parametrize("name", RECIPES)
def test_log_det_matches_the_autograd_jacobian_at_several_conditions(name):
    cf = _fitted(name)
    c = _conditions(3, seed=5)
    z0 = torch.randn(3, 1, cf.dim, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    _, log_det = cf.transform(c, z0)
    for m in range(3):

        def f(x, m=m):
            return cf.transform(c[m : m + 1], x.reshape(1, 1, -1))[0].reshape(-1)

        expected = torch.linalg.slogdet(jacobian(f, z0[m, 0]))[1]
        torch.testing.assert_close(log_det[m, 0], expected, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("name", LOW_DIM)
def test_q_depends_on_the_condition_and_integrates_to_one_at_each(name):
    cf = _fitted(name)
    c = _conditions(3, seed=7)
    draws = cf.rsample(c, 2000, torch.Generator().manual_seed(8))[0].detach()
    a = cf.rsample(c[:1], 50, torch.Generator().manual_seed(9))[0]
    b = cf.rsample(c[1:2], 50, torch.Generator().manual_seed(9))[0]
    assert (a - b).abs().max() > 1e-2, "the hypernetwork should make q depend on c"
    lo, hi = draws.amin((0, 1)), draws.amax((0, 1))
    pad = (hi - lo) / 2 + 2.0
    window = tuple((float(l_ - p), float(h + p)) for l_, h, p in zip(lo, hi, pad, strict=True))
    n = 4000 if cf.dim == 1 else 300
    log_q = cf.log_prob(c, grid_points(window, n))  # (3, n^D): the same cells under each c
    mass = torch.logsumexp(log_q, dim=1).exp() * cell_volume(window, n)
    torch.testing.assert_close(mass, torch.ones(3, dtype=torch.float64), atol=2e-3, rtol=0)


@pytest.mark.parametrize("name", RECIPES)
def test_spec_and_state_dict_rebuild_it_exactly(name):
    cf = _fitted(name)
    buffer = io.BytesIO()
    torch.save({"spec": cf.spec(), "state": cf.state_dict()}, buffer)
    buffer.seek(0)
    stored = torch.load(buffer, weights_only=True)
    assert json.loads(json.dumps(stored["spec"])) == stored["spec"]  # plain values only
    torch.manual_seed(123)  # a different init, random buffers included: the state must set all
    rebuilt = ConditionalFlow.from_spec(stored["spec"]).double()
    rebuilt.load_state_dict(stored["state"])
    c = _conditions(4, seed=10)
    y = cf.rsample(c, 16, torch.Generator().manual_seed(11))[0].detach()
    assert torch.equal(rebuilt.log_prob(c, y), cf.log_prob(c, y))
    assert rebuilt.spec() == cf.spec()


@pytest.mark.parametrize("name", RECIPES)
def test_at_init_q_is_the_unconditional_flows_init_at_every_condition(name):
    dim, arch = RECIPES[name]
    torch.manual_seed(12)
    flow = Flow(dim, arch)
    torch.manual_seed(12)
    cf = ConditionalFlow(dim, arch, LO, HI)
    c = torch.tensor([[-1.0, 0.0], [0.3, 1.7], [5.0, -3.0]])  # the last one outside the range
    expected = flow.state_dict()
    for m in range(len(c)):
        state = cf.at(c[m]).state_dict()
        assert state.keys() == expected.keys()
        assert all(torch.equal(state[k], expected[k]) for k in expected)
        drawn = cf.rsample(c[m : m + 1], 8, torch.Generator().manual_seed(13))
        plain = flow.rsample(8, torch.Generator().manual_seed(13))
        torch.testing.assert_close(drawn[0][0], plain[0], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(drawn[1][0], plain[1], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", RECIPES)
def test_only_the_hypernetwork_is_learnt_and_rsample_reaches_it(name):
    cf = _fitted(name)
    assert all(n.startswith("net.") for n, _ in cf.named_parameters())
    assert not any(k.startswith("flow.") and "net." in k for k in cf.state_dict())
    cf.rsample(_conditions(4, seed=14), 8)[1].mean().backward()
    for p in cf.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert cf.net[0].weight.grad.abs().max() > 0  # through ψ(c) to the first layer
    assert cf.net[-1].bias.grad.abs().max() > 0


def test_start_at_sets_the_fixed_affine_for_every_condition():
    arch = architecture("realnvp", 2, hidden=[8, 8], start="mode", dim=3)
    cf = ConditionalFlow(3, arch, LO, HI).double()  # couplings start as the identity
    mean = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    cov = torch.diag(torch.tensor([4.0, 0.25, 1.0], dtype=torch.float64))
    cf.start_at(mean, cov)
    c = _conditions(3, seed=15)
    z = cf.rsample(c, 4000, torch.Generator().manual_seed(16))[0].detach()  # q = N(mean, cov)
    torch.testing.assert_close(z.mean(1), mean.expand(3, 3), atol=0.15, rtol=0)
    torch.testing.assert_close(z.var(1), cov.diagonal().expand(3, 3), atol=0.3, rtol=0.1)
    expected = -0.5 * torch.logdet(2 * math.pi * cov)
    torch.testing.assert_close(cf.log_prob(c, mean[None])[:, 0], expected.expand(3))
    with pytest.raises(ValueError, match="fixed affine"):
        ConditionalFlow(*RECIPES["planar-2d"], LO, HI).start_at(mean[:2], cov[:2, :2])


@pytest.mark.parametrize(
    ("lo", "hi", "match"),
    [
        ([0.0], [1.0, 2.0], "same number"),
        ([], [], "same number"),
        ([0.0, 1.0], [1.0, 1.0], "variable 2's range"),
        ([0.0], [math.inf], "finite"),
        ([math.nan], [1.0], "finite"),
    ],
)
def test_a_bad_condition_range_is_refused(lo, hi, match):
    with pytest.raises(NfcliError, match=match):
        ConditionalFlow(*RECIPES["planar-2d"], lo, hi)


def test_conditions_and_points_of_the_wrong_shape_are_refused():
    cf = ConditionalFlow(*RECIPES["planar-2d"], LO, HI)
    with pytest.raises(ValueError, match=r"\(M, 2\)"):
        cf.rsample(torch.zeros(3), 4)
    with pytest.raises(ValueError, match=r"\(M, N, 2\) with M = 3"):
        cf.log_prob(torch.zeros(3, 2), torch.zeros(2, 5, 2))


def test_the_network_sees_the_condition_standardised_by_its_range():
    """ψ depends on (c − mid)/half-width only: the same network under the range 1000..1004
    at c = 1003 gives the q that it gives under −1..1 at c = 0.5."""
    dim, arch = RECIPES["realnvp-2d"]
    unit = _fitted("realnvp-2d")
    shifted = ConditionalFlow(dim, arch, [1000.0, 10.0], [1004.0, 30.0], hidden=(16,)).double()
    shifted.load_state_dict(unit.state_dict() | {"lo": shifted.lo, "hi": shifted.hi})
    y = torch.randn(1, 9, dim, generator=torch.Generator().manual_seed(17), dtype=torch.float64)
    at_unit = unit.log_prob(torch.tensor([[0.5, 1.5]]), y)  # LO, HI = (−1, 0)..(1, 2)
    at_shifted = shifted.log_prob(torch.tensor([[1003.0, 25.0]]), y)
    torch.testing.assert_close(at_shifted, at_unit, atol=1e-10, rtol=0)
    assert (unit.log_prob(torch.tensor([[-0.5, 0.5]]), y) - at_unit).abs().max() > 1e-3
