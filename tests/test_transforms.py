"""Every registered transform and every flow type through the same checks: log-det against an
autograd Jacobian, the inverse round trip (also at the edges of its constraints), restarts,
float64, a fit's checkpoint round trip, resume, trust report and figures."""

from pathlib import Path

import pytest
import torch
from clitools import run as run_cli
from torch.autograd.functional import jacobian

from nfcli import run
from nfcli.checkpoint import load_checkpoint
from nfcli.energy import load_energy
from nfcli.errors import NfcliError
from nfcli.flows import COUPLING_TYPES, FLOW_TYPES, Flow
from nfcli.run import run_fit
from nfcli.train import FitConfig, fit
from nfcli.transforms import REGISTRY, build

DATA = Path(__file__).parent / "data"

# each registered transform with the options it is tested with
SPECS = {
    "planar": {"K": 3, "init_scale": 0.8},
    "centred_planar": {"K": 3, "init_scale": 0.8},
    "radial": {"K": 3, "init_scale": 0.8},
    "additive_coupling": {"hidden": [8, 8]},
    "affine_coupling": {"hidden": [8]},
    "spline_coupling": {"hidden": [8], "bins": 5, "bound": 3.0},
    "reverse": {},
    "permutation": {},
    "orthogonal": {},
    "elementwise_affine": {"scale": 1.5},
    "affine": {},
    "fixed_affine": {},
}


def test_every_registered_transform_is_tested():
    assert set(SPECS) == set(REGISTRY)


def make(name: str, dim: int, restarts: int = 1, spread: float = 0.3, seed: int = 0):
    """The transform in float64 with every parameter moved off its (often identity) start."""
    torch.manual_seed(seed)
    t = build({"type": name, **SPECS[name]}, dim, restarts).double()
    with torch.no_grad():
        for p in t.parameters():
            p.add_(torch.randn_like(p) * spread)
        if name == "fixed_affine":  # no parameters: a Gaussian start's buffers
            t.shift.add_(torch.randn_like(t.shift))
            a = torch.randn_like(t.scale_tril) * spread
            t.scale_tril.copy_(torch.tril(a, -1) + torch.diag_embed(a.diagonal(0, -2, -1).exp()))
    return t


def points(dim: int, n: int = 7, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(1, n, dim, generator=g, dtype=torch.float64) * 2
    z[0, 0] = 0.0
    z[0, 1] = 3.0  # exactly at the spline's bound in every coordinate
    z[0, 2] = -7.0  # outside it: the identity tails
    return z


def dims(name: str) -> list[int]:
    return [2, 3, 5] if "coupling" in name else [1, 2, 5]


@pytest.mark.parametrize("name", sorted(SPECS))
def test_log_det_matches_the_autograd_jacobian(name):
    for dim in dims(name):
        t = make(name, dim)
        z = points(dim)
        _, log_det = t(z)
        for i in range(z.shape[1]):
            J = jacobian(lambda x, t=t, d=dim: t(x.reshape(1, 1, d))[0].reshape(d), z[0, i])
            expected = torch.linalg.slogdet(J)[1]
            torch.testing.assert_close(log_det[0, i], expected, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_inverse_round_trips_and_its_log_det_is_minus_the_forward_one(name):
    for dim in dims(name):
        t = make(name, dim)
        z = points(dim, n=200)
        y, log_det = t(z)
        back, inv_log_det = t.inverse(y)
        torch.testing.assert_close(back, z, atol=1e-8, rtol=0)
        torch.testing.assert_close(inv_log_det, -log_det, atol=1e-8, rtol=0)


EDGES = {
    # planar: wᵀu ≪ −1, so û sits at the constraint wᵀû → −1
    "planar": lambda t: t.u.copy_(-40 * t.w),
    # radial: β′ ≪ 0, so β → −α, where the layer is barely invertible
    "radial": lambda t: t.beta_raw.fill_(-30.0),
    # RealNVP: raw log-scales far beyond the tanh bound
    "affine_coupling": lambda t: t.net.biases[-1].mul_(0).add_(40.0),
    # splines: raw widths, heights and slopes ~5 apart, bins e⁵ ≈ 150× narrower than others
    "spline_coupling": lambda t: t.net.biases[-1].copy_(
        torch.randn(t.net.biases[-1].shape, generator=torch.Generator().manual_seed(2)) * 2.5
    ),
    "affine": lambda t: t.log_diag.fill_(-6.0),
    "elementwise_affine": lambda t: t.log_scale.fill_(8.0),
}


@pytest.mark.parametrize("name", sorted(EDGES))
def test_inverse_round_trips_at_the_edges_of_the_constraints(name):
    for dim in dims(name):
        t = make(name, dim, spread=0.1)
        with torch.no_grad():
            EDGES[name](t)
        z = points(dim, n=300)
        y, log_det = t(z)
        assert torch.isfinite(y).all() and torch.isfinite(log_det).all()
        back, inv_log_det = t.inverse(y)
        torch.testing.assert_close(back, z, atol=1e-7, rtol=1e-7)
        torch.testing.assert_close(inv_log_det, -log_det, atol=1e-6, rtol=1e-8)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_restarts_are_independent(name):
    """Restart r of a transform with R = 3 maps z like the same parameters alone (R = 1)."""
    dim = 3
    t = make(name, dim, restarts=3)
    z = torch.randn(3, 11, dim, dtype=torch.float64)
    y, log_det = t(z)
    for r in range(3):
        one = build(t.spec(), dim, 1).double()
        one.load_state_dict({k: v[r : r + 1] for k, v in t.state_dict().items()})
        y1, ld1 = one(z[r : r + 1])
        torch.testing.assert_close(y1[0], y[r])
        torch.testing.assert_close(ld1[0], log_det[r])


@pytest.mark.parametrize("flow", FLOW_TYPES)
def test_each_flow_type_has_an_exact_density_and_a_trajectory(flow):
    torch.manual_seed(0)
    K = 1 if flow == "affine" else 3
    options = {"hidden": [8]} if flow in COUPLING_TYPES else {}
    f = Flow.of(3, K, flow, restarts=2, **options).double()
    with torch.no_grad():
        for p in f.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    one = f.select(1)
    y, log_q = one.rsample(500)
    torch.testing.assert_close(one.log_prob(y), log_q, atol=1e-9, rtol=0)
    zs, radius = one.trajectory(50, torch.Generator().manual_seed(3))
    assert len(zs) == K + 1 and radius.shape == (50,)
    torch.testing.assert_close(zs[-1], one.sample(50, torch.Generator().manual_seed(3)))
    assert one.K == K


@pytest.mark.parametrize("flow", FLOW_TYPES)
def test_each_flow_type_resumes_bit_exactly_in_float64(flow):
    energy = load_energy("u1")
    config = FitConfig(
        flow=flow,
        iters=60,
        batch=32,
        anneal=20,
        restarts=2,
        dtype="float64",
        **({"K": 2, "hidden": [8]} if flow in COUPLING_TYPES else {}),
        **({"K": 2} if flow in ("planar", "radial") else {}),
    )
    whole = fit(energy, config)
    calls = iter(range(1, 10**9))
    first = fit(energy, config, stop=lambda: next(calls) >= 35)
    assert first.stopped == "interrupted" and first.state.step == 35
    rest = fit(energy, config, resume=first.state)
    assert torch.equal(rest.loss, whole.loss)
    for name, value in whole.flow.state_dict().items():
        assert value.dtype in (torch.float64, torch.int64)
        assert torch.equal(rest.flow.state_dict()[name], value), name


@pytest.mark.parametrize("flow", FLOW_TYPES)
def test_each_flow_type_fits_reports_draws_and_round_trips_its_checkpoint(
    flow, tmp_path, monkeypatch
):
    monkeypatch.setattr(run, "N_MONTE_CARLO", 4000)
    energy = load_energy("0.5*(x**2 + (y - x**2/4)**2)")
    extra = {"K": 2, "hidden": [16]} if flow in COUPLING_TYPES else {}
    extra = {"K": 2} if flow in ("planar", "radial") else extra
    config = FitConfig(flow=flow, iters=150, batch=128, **extra)
    ckpt, report = run_fit(energy, config, tmp_path)
    assert report.flow == flow and report.verdict in ("good", "usable", "do not trust")
    assert -0.5 < report.kl_qp < 1.0  # a real (if short) fit, measured by quadrature
    for name in ("density", "layers", "loss"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
    loaded = load_checkpoint(tmp_path / "model.pt")
    assert loaded.flow.architecture == ckpt.flow.architecture
    y = loaded.flow.sample(300, torch.Generator().manual_seed(0))
    torch.testing.assert_close(loaded.flow.log_prob(y), ckpt.flow.log_prob(y))


@pytest.mark.parametrize("kind", ["planar", "radial"])
def test_format_1_checkpoints_load_sample_and_resume(kind, tmp_path):
    """Checkpoints written before the transform design (format 1, no architecture)."""
    ckpt = load_checkpoint(DATA / f"format1_{kind}.pt")
    assert ckpt.config.flow == kind and ckpt.flow.K == 3
    assert [t["type"] for t in ckpt.flow.architecture["transforms"]] == [kind]
    y, log_q = ckpt.flow.rsample(200)
    torch.testing.assert_close(ckpt.flow.log_prob(y), log_q, atol=1e-4, rtol=1e-4)
    energy = load_energy(ckpt.energy_source["text"])
    more = fit(energy, FitConfig(**{**ckpt.config.to_dict(), "iters": 80}), resume=ckpt.training)
    assert more.steps == 80 and torch.equal(more.loss[:60], ckpt.history["loss"])
    if kind == "planar":  # plot through the CLI (a subprocess's worth of time: once)
        result = run_cli("plot", DATA / f"format1_{kind}.pt", "-o", tmp_path, "--dpi", "40")
        assert result.exit_code == 0, result.output
        assert (tmp_path / "density.png").stat().st_size > 1000


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"flow": "glow"}, "Unknown flow type 'glow'"),
        ({"flow": "planar", "hidden": [32]}, "--hidden 32 does not apply to --flow planar"),
        ({"flow": "realnvp", "bins": 4}, "--bins 4 does not apply to --flow realnvp"),
        ({"flow": "affine", "K": 4}, "--K 4 does not apply to --flow affine"),
        ({"flow": "spline", "bins": 1}, "--bins 1 is out of range"),
        ({"flow": "nice", "hidden": [0]}, "must list one or more layer sizes"),
    ],
)
def test_options_that_do_not_apply_are_refused(change, fragment):
    with pytest.raises(NfcliError, match=fragment.replace("(", r"\(")):
        FitConfig(**change).validate()


def test_couplings_refuse_one_dimensional_targets():
    with pytest.raises(NfcliError, match="needs at least 2 of them; this target has 1"):
        fit(load_energy("x**2/2"), FitConfig(flow="realnvp", iters=2))


def test_centred_planar_layers_stay_smooth_as_w_goes_to_zero():
    """1-D, u fixed, w → 0, so that û = m(wu)/w grows as 1/w: with a free offset (b = 1) the
    layer's shift grows as 1/w and its gradient in w as 1/w²; about a centre (c = 1) the layer
    tends to a linear map with bounded gradients (``CentredPlanar``: why 1-D fits no longer
    strand layers there)."""
    z = torch.tensor([[[0.5], [2.0]]], dtype=torch.float64)
    grads = {}
    for name, offset in [("planar", "b"), ("centred_planar", "c")]:
        sizes = []
        for w in (1e-2, 1e-4, 1e-6):
            t = build({"type": name, "K": 1, "init_scale": 0.1}, 1).double()
            with torch.no_grad():
                t.w.fill_(w)
                t.u.fill_(0.5)
                getattr(t, offset).fill_(1.0)
            y, _ = t(z)
            (g,) = torch.autograd.grad(y.sum(), t.w)
            sizes.append((y.abs().max().item(), g.abs().max().item()))
        grads[name] = sizes
    (y2, g2), _, (y6, g6) = grads["planar"]
    assert y6 > 1e3 * y2 and g6 > 1e7 * g2  # shift ∝ 1/w, gradient ∝ 1/w²
    for y, g in grads["centred_planar"]:
        assert y < 3 and g < 10
