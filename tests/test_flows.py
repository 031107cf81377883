"""Flows: log-determinants against autograd Jacobians, the invertibility constraints, and the
hand-written planar backward pass against autograd through the readable ``planar``."""

import math

import pytest
import torch
from torch.autograd.functional import jacobian

from nfcli.flows import Flow
from nfcli.transforms import (
    PlanarStack,
    planar,
    planar_chain,
    planar_inverse,
    planar_u_hat,
    radial,
    radial_alpha_beta,
    radial_inverse,
)


@pytest.fixture(autouse=True)
def float64():
    """These tests compare to 1e-10: run them in float64, and restore the default afterwards."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _logabsdet_by_autograd(f, z: torch.Tensor) -> torch.Tensor:
    """ln|det ∂f/∂z| per row of z, from the full Jacobian (O(D³), for checking only)."""
    return torch.stack([torch.linalg.slogdet(jacobian(f, zi))[1] for zi in z])


@pytest.mark.parametrize("D", [1, 2, 5])
def test_planar_log_det_matches_autograd_jacobian(D):
    g = torch.Generator().manual_seed(D)
    z = torch.randn(6, D, generator=g)
    u, w = torch.randn(D, generator=g) * 2, torch.randn(D, generator=g)
    b = torch.randn((), generator=g)
    u_hat = planar_u_hat(u, w)
    _, log_det = planar(z, u_hat, w, b)
    expected = _logabsdet_by_autograd(lambda x: planar(x[None], u_hat, w, b)[0][0], z)
    torch.testing.assert_close(log_det, expected, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("D", [1, 2, 5])
def test_radial_log_det_matches_autograd_jacobian(D):
    g = torch.Generator().manual_seed(10 + D)
    z = torch.randn(6, D, generator=g)
    z0 = torch.randn(D, generator=g)
    alpha, beta = radial_alpha_beta(torch.randn((), generator=g), torch.randn((), generator=g))
    _, log_det = radial(z, z0, alpha, beta)
    expected = _logabsdet_by_autograd(lambda x: radial(x[None], z0, alpha, beta)[0][0], z)
    torch.testing.assert_close(log_det, expected, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 30.0])
def test_planar_constraint_keeps_every_layer_invertible(scale):
    """wᵀû ≥ −1 for arbitrary raw (u, w), including wᵀu hugely negative (where softplus underflows
    and wᵀû reaches the edge −1), so along w the layer α ↦ α + wᵀû·tanh(α + b) is increasing."""
    g = torch.Generator().manual_seed(0)
    u = torch.randn(2000, 3, generator=g) * scale
    w = torch.randn(2000, 3, generator=g) * scale
    u[:500] = -w[:500] * 50  # wᵀu ≪ 0: the case the constraint exists for
    b = torch.randn(2000, generator=g)
    u_hat = planar_u_hat(u, w)
    wu_hat = (w * u_hat).sum(-1)
    torch.testing.assert_close(
        wu_hat.clamp_min(-1), -1 + torch.nn.functional.softplus((w * u).sum(-1))
    )
    alpha = torch.linspace(-6, 6, 2001)[:, None]
    image = alpha + wu_hat.clamp_min(-1) * torch.tanh(alpha + b)
    assert torch.all(image[1:] > image[:-1])  # strictly increasing, hence one-to-one
    # and the layer's log-determinant is never NaN there, in float32 as in float64
    for dtype in (torch.float32, torch.float64):
        z = torch.randn(64, 3, generator=g).to(dtype)
        for k in range(0, 2000, 97):
            _, ld = planar(z, u_hat[k].to(dtype), w[k].to(dtype), b[k].to(dtype))
            assert not torch.isnan(ld).any()


def test_planar_constraint_uses_the_square_of_the_norm():
    """û − u is parallel to w and makes wᵀû = m(wᵀu) = −1 + softplus(wᵀu) exactly."""
    u, w = torch.tensor([0.3, -2.0]), torch.tensor([3.0, 4.0])  # ‖w‖ = 5, ‖w‖² = 25
    wu = (w * u).sum()
    u_hat = planar_u_hat(u, w)
    torch.testing.assert_close((w * u_hat).sum(), -1 + torch.nn.functional.softplus(wu))


def test_radial_constraint_keeps_every_layer_invertible():
    g = torch.Generator().manual_seed(1)
    a_raw, b_raw = torch.randn(1000, generator=g) * 20, torch.randn(1000, generator=g) * 20
    alpha, beta = radial_alpha_beta(a_raw, b_raw)
    assert torch.all(alpha > 0) and torch.all(beta >= -alpha)
    r = torch.linspace(0, 50, 201)[:, None]
    h = 1 / (alpha + r)
    # both determinant factors non-negative for all r (to rounding), and r ↦ r(1 + βh) increasing
    assert torch.all(1 + beta * h >= -1e-12) and torch.all(1 + beta * alpha * h * h >= -1e-12)
    rho = r * (1 + beta * h)
    assert torch.all(rho[1:] > rho[:-1])


@pytest.mark.parametrize("D", [3, 10])  # planar_chain: as columns, and as (R, N, D)
def test_planar_stack_matches_readable_layers_values_and_gradients(D):
    """R = 3 flows of K = 6 layers through the fast path (and the compiled path's
    ``planar_chain``) equal ``planar`` applied flow by flow."""
    g = torch.Generator().manual_seed(3)
    R, K, N = 3, 6, 9
    z = torch.randn(R, N, D, generator=g, requires_grad=True)
    u = torch.randn(R, K, D, generator=g, requires_grad=True)
    w = torch.randn(R, K, D, generator=g, requires_grad=True)
    b = torch.randn(R, K, generator=g, requires_grad=True)

    def readable(z, u, w, b):
        u_hat, outs, dets = planar_u_hat(u, w), [], []
        for r in range(R):
            zr, total = z[r], 0
            for k in range(K):
                zr, ld = planar(zr, u_hat[r, k], w[r, k], b[r, k])
                total = total + ld
            outs.append(zr)
            dets.append(total)
        return torch.stack(outs), torch.stack(dets)

    def fast(z, u, w, b):
        return PlanarStack.apply(z, planar_u_hat(u, w), w, b)

    def traceable(z, u, w, b):  # what a compiled flow runs
        return planar_chain(z, planar_u_hat(u, w), w, b)

    g_z, g_ld = torch.randn(R, N, D, generator=g), torch.randn(R, N, generator=g)
    results = []
    for fn in (readable, fast, traceable):
        zk, ld = fn(z, u, w, b)
        grads = torch.autograd.grad((zk * g_z).sum() + (ld * g_ld).sum(), (z, u, w, b))
        results.append((zk, ld, *grads))
    for other in results[1:]:
        for a, c in zip(results[0], other, strict=True):
            torch.testing.assert_close(a, c, atol=1e-12, rtol=1e-10)
    assert torch.autograd.gradcheck(fast, (z[:2, :4], u[:2], w[:2], b[:2]))


@pytest.mark.parametrize("kind", ["planar", "radial"])
def test_flow_log_q_is_base_density_minus_log_dets(kind):
    torch.manual_seed(0)
    flow = Flow.of(3, 4, kind, init_scale=0.7, base_scale=0.5)
    with torch.no_grad():
        flow.base.loc.copy_(torch.tensor([[0.1, -0.2, 0.3]]))
    z0, log_q0 = flow.base.rsample(50, torch.Generator().manual_seed(1))
    torch.testing.assert_close(log_q0, flow.base.log_prob(z0))
    zk, log_det = flow.transform(z0)
    z_again, log_q = flow.rsample(50, torch.Generator().manual_seed(1))
    torch.testing.assert_close(z_again, zk[0])
    torch.testing.assert_close(log_q, (log_q0 - log_det)[0])


@pytest.mark.parametrize("kind", ["planar", "radial"])
def test_restarts_are_independent_flows_and_select_takes_one_out(kind):
    """Flow r of a batched Flow.of(restarts=R) gives the same samples and ln q as select(r)."""
    torch.manual_seed(1)
    flow = Flow.of(2, 5, kind, init_scale=0.8, restarts=4)
    eps = torch.randn(4, 30, 2)
    with torch.no_grad():
        z_all, log_q_all = flow.transform(
            flow.base.loc[:, None] + flow.base.log_scale.exp()[:, None] * eps
        )
        for r in range(4):
            single = flow.select(r)
            assert single.restarts == 1
            z0 = single.base.loc + single.base.log_scale.exp() * eps[r : r + 1]
            z, log_det = single.transform(z0)
            torch.testing.assert_close(z[0], z_all[r])
            torch.testing.assert_close(log_det[0], log_q_all[r])
    with pytest.raises(ValueError, match="select"):
        flow.rsample(3)


def test_base_log_prob_is_the_normal_density():
    base = Flow.of(2, 1).base
    with torch.no_grad():
        base.loc.copy_(torch.tensor([[1.0, -1.0]]))
        base.log_scale.copy_(torch.tensor([[math.log(2.0), 0.0]]))
    z = torch.tensor([[[0.0, 0.0], [1.0, -1.0]]])
    normal = torch.distributions.Normal(base.loc[0], base.log_scale.exp()[0])
    torch.testing.assert_close(base.log_prob(z)[0], normal.log_prob(z[0]).sum(-1))


# --- inverses and the exact density -------------------------------------------------------------


@pytest.mark.parametrize("D", [1, 2, 5])
def test_planar_inverse_round_trips_including_the_constraint_edge(D):
    g = torch.Generator().manual_seed(100 + D)
    z = torch.randn(500, D, generator=g) * 3
    for trial in range(30):
        w = torch.randn(D, generator=g) * 2
        u = -w * 40 if trial % 3 == 0 else torch.randn(D, generator=g) * 4  # edge: wᵀû → −1
        b = torch.randn((), generator=g)
        u_hat = planar_u_hat(u, w)
        y, _ = planar(z, u_hat, w, b)
        # within 40 iterations (at most 35 here; the bracket's forced bisections took 62–63)
        inverse = planar_inverse(y, u_hat, w, b, max_iter=40)
        torch.testing.assert_close(inverse, z, atol=1e-8, rtol=0)


@pytest.mark.parametrize("D", [1, 2, 5])
def test_radial_inverse_round_trips_including_the_constraint_edge(D):
    g = torch.Generator().manual_seed(200 + D)
    z = torch.randn(500, D, generator=g) * 3
    for trial in range(30):
        beta_raw = torch.randn((), generator=g) * 3 - (30 if trial % 3 == 0 else 0)  # β → −α
        alpha, beta = radial_alpha_beta(torch.randn((), generator=g) * 3, beta_raw)
        z0 = torch.randn(D, generator=g)
        y, _ = radial(z, z0, alpha, beta)
        torch.testing.assert_close(radial_inverse(y, z0, alpha, beta), z, atol=1e-8, rtol=0)


@pytest.mark.parametrize("kind", ["planar", "radial"])
def test_exact_log_prob_agrees_with_sampling_and_integrates_to_one(kind):
    torch.manual_seed(5)
    flow = Flow.of(2, 8, kind, init_scale=1.0, base_scale=0.7)
    with torch.no_grad():
        y, log_q = flow.rsample(3000)
    torch.testing.assert_close(flow.log_prob(y), log_q, atol=1e-6, rtol=0)
    # ∫ q = 1 on a grid that holds the samples (midpoint rule)
    lo, hi = y.min(0).values - 3, y.max(0).values + 3
    n = 500
    xs = [lo[i] + (torch.arange(n) + 0.5) * (hi[i] - lo[i]) / n for i in range(2)]
    grid = torch.stack(torch.meshgrid(*xs, indexing="ij"), -1).reshape(-1, 2)
    cell = ((hi - lo) / n).prod()
    assert (flow.log_prob(grid).exp().sum() * cell).item() == pytest.approx(1.0, abs=2e-3)
