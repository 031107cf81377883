"""Rational-quadratic spline: values against a scalar transcription of the paper's formula,
knot interpolation, log-derivatives against autograd, inverse round trips, monotonicity, the
identity tails and the identity parameters, and gradients w.r.t. the parameters."""

import math

import pytest
import torch

from nfcli.splines import rational_quadratic_spline

BOUND = 3.0
MIN = 1e-3


def params(shape, num_bins, dtype=torch.float64, seed=0, scale=1.5):
    """Random raw widths, heights, derivatives: (*shape, B), (*shape, B), (*shape, B - 1)."""
    g = torch.Generator().manual_seed(seed)
    w = scale * torch.randn(*shape, num_bins, generator=g, dtype=dtype)
    h = scale * torch.randn(*shape, num_bins, generator=g, dtype=dtype)
    d = scale * torch.randn(*shape, num_bins - 1, generator=g, dtype=dtype)
    return w, h, d


def knots(raw, bound=BOUND, min_size=MIN):
    """Knot positions (..., B+1) written out independently of the module (no forced end points)."""
    num_bins = raw.shape[-1]
    u = min_size + (1 - min_size * num_bins) * torch.softmax(raw, -1)
    c = torch.cumsum(u, -1)
    return torch.cat([torch.zeros_like(c[..., :1]), c], -1) * 2 * bound - bound


def interior_derivatives(raw):
    return MIN + torch.nn.functional.softplus(raw)


def spline(x, w, h, d, **kw):
    return rational_quadratic_spline(x, w, h, d, bound=BOUND, **kw)


def test_matches_scalar_transcription_of_the_paper():
    """Eq. (4) of the paper, evaluated bin by bin in plain Python floats for one element."""
    w, h, d = params((), 6, seed=1)
    xs = knots(w).tolist()
    ys = knots(h).tolist()
    ds = [1.0, *interior_derivatives(d).tolist(), 1.0]
    pts = torch.linspace(-BOUND + 1e-3, BOUND - 1e-3, 41, dtype=torch.float64)
    y, log_det = spline(pts, w, h, d)
    for p, yi, li in zip(pts.tolist(), y.tolist(), log_det.tolist(), strict=True):
        k = max(i for i in range(6) if xs[i] <= p)
        wk, hk = xs[k + 1] - xs[k], ys[k + 1] - ys[k]
        s = hk / wk
        xi = (p - xs[k]) / wk
        t = xi * (1 - xi)
        den = s + (ds[k + 1] + ds[k] - 2 * s) * t
        ref = ys[k] + hk * (s * xi**2 + ds[k] * t) / den
        ref_deriv = s**2 * (ds[k + 1] * xi**2 + 2 * s * t + ds[k] * (1 - xi) ** 2) / den**2
        assert yi == pytest.approx(ref, abs=1e-12)
        assert li == pytest.approx(math.log(ref_deriv), abs=1e-12)


@pytest.mark.parametrize("num_bins", [1, 2, 8])
def test_interpolates_knots_with_their_derivatives(num_bins):
    """f(x_k) = y_k and f'(x_k) = d_k, with d_0 = d_B = 1."""
    w, h, d = params((5,), num_bins, seed=2)
    xk, yk = knots(w), knots(h)
    one = torch.ones(5, 1, dtype=torch.float64)
    dk = torch.cat([one, interior_derivatives(d), one], -1)
    y, log_det = spline(xk.T.contiguous(), w, h, d)  # (B+1, 5): row j holds knot j of each
    torch.testing.assert_close(y, yk.T, atol=1e-12, rtol=0)
    torch.testing.assert_close(log_det.exp(), dk.T, atol=1e-10, rtol=0)


def probe_points(w, n_random=30, seed=3):
    """x of shape (P, *w.shape[:-1]): random inside, every knot, ±bound exactly, outside."""
    lead = w.shape[:-1]
    g = torch.Generator().manual_seed(seed)
    rand = (2 * torch.rand(n_random, *lead, generator=g, dtype=w.dtype) - 1) * BOUND
    at_knots = knots(w).movedim(-1, 0)
    edges = torch.tensor([-BOUND, BOUND], dtype=w.dtype).reshape(2, *[1] * len(lead))
    outside = torch.tensor([-1e3, -BOUND - 0.5, BOUND + 1e-6, BOUND + 2.0], dtype=w.dtype)
    outside = outside.reshape(4, *[1] * len(lead))
    return torch.cat([rand, at_knots, edges.expand(2, *lead), outside.expand(4, *lead)])


@pytest.mark.parametrize("num_bins", [1, 3, 10])
@pytest.mark.parametrize("inverse", [False, True])
def test_log_det_is_autograd_derivative(num_bins, inverse):
    w, h, d = params((4,), num_bins, seed=num_bins)
    x = probe_points(h if inverse else w).requires_grad_(True)
    y, log_det = spline(x, w, h, d, inverse=inverse)
    (dydx,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(dydx, log_det.exp(), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize(
    ("dtype", "tol"), [(torch.float64, 1e-10), (torch.float32, 1e-4)], ids=["f64", "f32"]
)
@pytest.mark.parametrize("num_bins", [1, 4, 16])
def test_inverse_round_trip(dtype, tol, num_bins):
    w, h, d = params((3,), num_bins, dtype=dtype, seed=10 + num_bins)
    # forward then inverse, from x (knots of the domain included) ...
    x = probe_points(w)
    y, ld = spline(x, w, h, d)
    x2, ld_inv = spline(y, w, h, d, inverse=True)
    torch.testing.assert_close(x2, x, atol=tol, rtol=tol)
    torch.testing.assert_close(ld_inv, -ld, atol=tol, rtol=tol)
    # ... and inverse then forward, from y (knots of the range included)
    y = probe_points(h)
    x, ld_inv = spline(y, w, h, d, inverse=True)
    y2, ld = spline(x, w, h, d)
    torch.testing.assert_close(y2, y, atol=tol, rtol=tol)
    torch.testing.assert_close(ld, -ld_inv, atol=tol, rtol=tol)
    assert x.dtype == y.dtype == ld.dtype == dtype


def float32_batch(scale, n=20000, num_bins=8):
    """Parameters ~ scale·N(0, 1) and y = f(x) of x uniform on [-bound, bound] (in float64), all
    cast to float32: the y crowd where the spline is flat, so the inverse is ill-conditioned."""
    g = torch.Generator().manual_seed(0)
    w, h, d = (
        scale * torch.randn(n, k, generator=g, dtype=torch.float64)
        for k in (num_bins, num_bins, num_bins - 1)
    )
    x = (2 * torch.rand(n, generator=g, dtype=torch.float64) - 1) * BOUND
    y, _ = spline(x, w, h, d)
    return y.float(), w.float(), h.float(), d.float()


def test_float32_inverse_error_is_what_conditioning_allows():
    """|x32 − x| ≲ ε·bound·(1 + dx/dy), x from float64 with the same parameters (cast up)."""
    y, w, h, d = float32_batch(scale=1.0)
    x, _ = spline(y, w, h, d, inverse=True)
    x_ref, ld_ref = spline(y.double(), w.double(), h.double(), d.double(), inverse=True)
    err = (x.double() - x_ref).abs()
    eps = torch.finfo(torch.float32).eps
    assert (err / (eps * BOUND * (1 + ld_ref.exp()))).max() < 10


def test_float32_sharp_parameters_stay_finite_and_in_range():
    """Raw parameters ~ 6·N(0, 1) give bins where dy/dx ~ 1e-7: rounding there put the root ξ
    outside its bin (x up to 3% past the bound) and the inverse log-det at ln(negative) = nan."""
    y, w, h, d = float32_batch(scale=6.0)
    x, ld_inv = spline(y, w, h, d, inverse=True)
    assert torch.isfinite(ld_inv).all()
    assert x.abs().max() <= BOUND
    y2, ld = spline(x, w, h, d)
    assert torch.isfinite(ld).all()
    assert (y2 - y).abs().max() < 1e-2  # f'(x) up to ~e^18 amplifies x's rounding


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_monotone_and_identity_tails(seed):
    w, h, d = params((), 12, seed=seed, scale=3.0)  # sharp bins, derivatives from ~0 to ~e^9
    x = torch.linspace(-2 * BOUND, 2 * BOUND, 20001, dtype=torch.float64)
    y, log_det = spline(x, w, h, d)
    assert (y.diff() > 0).all()
    out = x.abs() > BOUND
    assert torch.equal(y[out], x[out])
    assert torch.equal(log_det[out], torch.zeros_like(log_det[out]))


def test_continuous_at_bound():
    """Value and derivative join the identity at ±bound."""
    w, h, d = params((), 7, seed=5, scale=2.0)
    for edge in (-BOUND, BOUND):
        x = torch.tensor([edge - 1e-9, edge, edge + 1e-9], dtype=torch.float64)
        y, log_det = spline(x, w, h, d)
        torch.testing.assert_close(y, x, atol=1e-8, rtol=0)
        assert log_det[1].abs() < 1e-12  # d_0 = d_B = 1 at the edge itself
        # one-sided: |ln f'(edge ∓ ε)| = O(ε·f''), f'' bounded by the bins' finite curvature
        assert log_det.abs().max() < 1e-5


@pytest.mark.parametrize("inverse", [False, True])
def test_identity_parameters(inverse):
    """widths = heights = 0 give uniform bins, s_k = 1; raw derivatives log(e^(1 − m) − 1) give
    d_k = softplus + m = 1; then the spline is the identity on [-bound, bound] too."""
    num_bins = 5
    raw_d = math.log(math.expm1(1.0 - MIN))
    d = torch.full((num_bins - 1,), raw_d, dtype=torch.float64)
    assert interior_derivatives(d).tolist() == pytest.approx([1.0] * 4, abs=1e-15)
    w = h = torch.zeros(num_bins, dtype=torch.float64)
    x = torch.linspace(-1.5 * BOUND, 1.5 * BOUND, 301, dtype=torch.float64)
    y, log_det = spline(x, w, h, d, inverse=inverse)
    torch.testing.assert_close(y, x, atol=1e-12, rtol=0)
    torch.testing.assert_close(log_det, torch.zeros_like(x), atol=1e-12, rtol=0)


def test_broadcasting_and_per_element_parameters():
    """x (R, N, d) with params (R, N, d, B), and params (d, B) shared across (R, N): each element
    uses its own parameters, the same as evaluating it alone."""
    R, N, D, B = 2, 3, 4, 5
    w, h, d = params((R, N, D), B, seed=7)
    x = torch.randn(R, N, D, dtype=torch.float64, generator=torch.Generator().manual_seed(8)) * 2
    y, log_det = spline(x, w, h, d)
    assert y.shape == log_det.shape == (R, N, D)
    for idx in [(0, 0, 0), (1, 2, 3), (0, 1, 2)]:
        yi, li = spline(x[idx], w[idx], h[idx], d[idx])
        assert yi.shape == ()
        torch.testing.assert_close(y[idx], yi, atol=1e-14, rtol=0)
        torch.testing.assert_close(log_det[idx], li, atol=1e-14, rtol=0)
    ws, hs, ds = w[0, 0], h[0, 0], d[0, 0]
    y_shared, _ = spline(x, ws, hs, ds)
    y_expanded, _ = spline(
        x, ws.expand(R, N, D, B), hs.expand(R, N, D, B), ds.expand(R, N, D, B - 1)
    )
    torch.testing.assert_close(y_shared, y_expanded, atol=0, rtol=0)


@pytest.mark.parametrize("inverse", [False, True])
def test_gradcheck(inverse):
    """Finite-difference check w.r.t. x and all three raw parameter tensors (points away from
    knots, where the map is smooth in the parameters; two points outside)."""
    w, h, d = params((3,), 4, seed=9)
    x = torch.tensor([[-2.1, 0.3, 1.7], [0.05, -0.8, 2.4], [-4.0, 3.5, 0.0]], dtype=torch.float64)
    inputs = tuple(t.clone().requires_grad_(True) for t in (x, w, h, d))
    assert torch.autograd.gradcheck(
        lambda *a: spline(*a, inverse=inverse), inputs, eps=1e-6, atol=1e-6
    )


def test_bad_shapes_and_minimums():
    w, h, d = params((), 4)
    with pytest.raises(ValueError, match="B - 1"):
        spline(torch.zeros(()), w, h, d[:-1])
    with pytest.raises(ValueError, match="min_width"):
        spline(torch.zeros(()), w, h, d, min_width=0.3)
