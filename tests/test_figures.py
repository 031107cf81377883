"""Figures: the builders draw the panels asked for; nfcli plot and nfcli compare write valid images
of the expected size in each format, a summary.csv, and refuse bad options with exit code 2."""

import csv
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import matplotlib
import matplotlib.legend
import matplotlib.pyplot as plt
import matplotlib.text
import numpy as np
import pytest
import torch
from clitools import assert_refused, run
from PIL import Image

from nfcli import figures
from nfcli.checkpoint import load_checkpoint
from nfcli.compare import split_targets
from nfcli.diagnostics import LogQGrid, quadrature
from nfcli.energy import load_energy
from nfcli.errors import NfcliError
from nfcli.figures import mass_range_1d, preset_window
from nfcli.flows import Flow
from nfcli.plots import (
    ComparePanel,
    CompareRow,
    compare_figure,
    default_layers,
    density_1d_figure,
    density_2d_figure,
    layers_figure,
    loss_figure,
    mass_window,
    pairs_figure,
    save_figure,
)

TINY = ["--iters", "60", "--anneal", "20", "--K", "3"]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def panels(fig: plt.Figure) -> list[plt.Axes]:
    """The visible axes that hold data (colour bars and hidden grid cells excluded)."""
    return [
        ax
        for ax in fig.axes
        if ax.get_visible()
        and (ax.collections or ax.images or ax.lines or ax.patches)
        and ax.get_label() != "<colorbar>"
    ]


# --- builders ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["planar", "radial"])
def test_trajectory_follows_the_readable_layers_to_the_fast_path(kind):
    torch.manual_seed(0)
    flow = Flow.of(2, 5, kind, init_scale=0.8)
    zs, radius = flow.trajectory(500, torch.Generator().manual_seed(3))
    assert len(zs) == 6 and all(z.shape == (500, 2) for z in zs)
    fast = flow.sample(500, torch.Generator().manual_seed(3))
    torch.testing.assert_close(zs[-1], fast, rtol=1e-5, atol=1e-5)
    eps = (zs[0] - flow.base.loc[0]) / flow.base.log_scale[0].exp()
    torch.testing.assert_close(radius, eps.norm(dim=-1))


def test_default_layers_are_every_layer_or_an_even_spread_with_both_ends():
    assert default_layers(32) == list(range(33))
    many = default_layers(128)
    assert len(many) == 36 and many[0] == 0 and many[-1] == 128 and many == sorted(set(many))


@pytest.mark.parametrize(("dim", "layers"), [(1, [0, 2]), (2, [0, 1, 2, 3, 4]), (5, [0, 4])])
def test_layers_figure_draws_one_panel_per_requested_layer(dim, layers):
    flow = Flow.of(dim, 4, "planar", init_scale=0.5)
    zs, radius = flow.trajectory(200)
    names = [f"x{i}" for i in range(dim)]
    fig = layers_figure(zs, radius, layers, names, "t", columns=(0, 1) if dim < 3 else (3, 1))
    shown = panels(fig)
    assert len(shown) == len(layers)
    assert next(ax.get_title() for ax in shown) == "base z₀"
    if dim == 5:  # the chosen columns are drawn: x3 against x1
        x, y = shown[-1].collections[0].get_offsets().T
        torch.testing.assert_close(torch.tensor(x), zs[4][:, 3].double(), check_dtype=False)
        torch.testing.assert_close(torch.tensor(y), zs[4][:, 1].double(), check_dtype=False)
    plt.close(fig)


def test_layers_panels_share_one_window_and_are_labelled_on_the_outer_edges_only():
    """The panels are not shared axes (each would visit all its siblings at every limit lookup),
    but look as if they were: one window and one set of ticks for all, tick labels only on the
    bottom row (x) and the left column (y); 5 layers: 2 rows of 3, the last cell hidden."""
    flow = Flow.of(2, 4, "planar", init_scale=0.5)
    zs, radius = flow.trajectory(200)
    fig = layers_figure(zs, radius, [0, 1, 2, 3, 4], ["x", "y"], "t")
    shown = panels(fig)
    assert len(shown) == 5 and not any(ax.get_shared_x_axes().get_siblings(ax)[1:] for ax in shown)
    for i, ax in enumerate(shown):
        assert ax.get_xlim() == shown[0].get_xlim() and ax.get_ylim() == shown[0].get_ylim()
        assert list(ax.get_xticks()) == list(shown[0].get_xticks()) and len(ax.get_xticks()) > 1
        x_labelled = [t.label1.get_visible() for t in ax.xaxis.get_major_ticks()]
        y_labelled = [t.label1.get_visible() for t in ax.yaxis.get_major_ticks()]
        assert set(x_labelled) == {i >= 3} and set(y_labelled) == {i % 3 == 0}, i
    plt.close(fig)


def test_an_indexed_png_has_the_pixels_of_the_rgba_one(tmp_path):
    """save_figure(palette=True) takes Agg's raw pixels (int(inches · dpi) of them each way, here
    2.05 in at 97 dpi: 198.85 → 198) rather than a PNG; in few colours, they are the same."""
    fig, ax = plt.subplots(figsize=(2.05, 1.5))
    ax.scatter([0, 1, 2], [0, 1, 0], c=["C0", "C1", "C2"], s=40)
    plain = Image.open(save_figure(fig, tmp_path / "plain.png", dpi=97)).convert("RGB")
    fig, ax = plt.subplots(figsize=(2.05, 1.5))
    ax.scatter([0, 1, 2], [0, 1, 0], c=["C0", "C1", "C2"], s=40)
    indexed = Image.open(save_figure(fig, tmp_path / "indexed.png", dpi=97, palette=True))
    assert indexed.mode == "P" and indexed.size == plain.size == (198, 145)
    same = np.asarray(indexed.convert("RGB")) == np.asarray(plain)
    assert same.all(-1).mean() > 0.99
    with matplotlib.rc_context({"savefig.bbox": "tight"}):  # not the figure's size: via a PNG
        fig, ax = plt.subplots(figsize=(2.05, 1.5))
        ax.scatter([0, 1, 2], [0, 1, 0], c=["C0", "C1", "C2"], s=40)
        tight = Image.open(save_figure(fig, tmp_path / "tight.png", dpi=97, palette=True))
    assert tight.mode == "P" and tight.size != plain.size


def test_pairs_figure_is_a_corner_plot_with_reweighted_marginals():
    samples = torch.randn(2000, 5)
    names = ["a", "b", "c", "d", "e"]
    fig = pairs_figure(samples, names, [0, 2, 4], "t", weights=torch.rand(2000))
    shown = panels(fig)
    assert len(shown) == 6  # 3 diagonal + 3 below it
    labels = {ax.get_xlabel() for ax in shown} | {ax.get_ylabel() for ax in shown}
    assert {"a", "c", "e"} <= labels and "b" not in labels
    diagonal = [ax for ax in shown if not ax.collections]
    assert len(diagonal) == 3
    # q's histogram and the reweighted one (p) on every diagonal panel
    assert all(len(ax.patches) > 60 for ax in diagonal)
    plt.close(fig)


def test_compare_figure_has_target_fits_and_bound_per_row():
    img = torch.rand(20, 20)
    row = CompareRow("u1", ["z1", "z2"], ((-4, 4), (-4, 4)), img, 1.88)
    row.panels = [ComparePanel("planar", k, img, -1.8 + 1 / k, 0.01, 0.1 / k) for k in (2, 8, 32)]
    xs = torch.linspace(-3, 3, 50)
    row1 = CompareRow("x**2/2", ["x"], ((-3, 3), (-3, 3)), xs.exp(), None, xs=xs)
    row1.panels = [ComparePanel("radial", k, xs.exp(), 0.1, 0.01) for k in (2, 8)]
    fig = compare_figure([row, row1])
    shown = panels(fig)
    assert len(shown) == (1 + 3 + 1) + (1 + 2 + 1)
    titles = [ax.get_title() for ax in shown]
    assert titles.count("target") == 2 and titles.count("bound against K") == 2
    assert "planar K = 8\nKL 0.013" in titles
    bound = next(ax for ax in shown if ax.get_title() == "bound against K")
    assert list(bound.lines[0].get_xdata()) == [2, 8, 32]
    plt.close(fig)


def test_mass_window_holds_the_target_mass():
    energy = load_energy("x**2/2 + (y/3)**2/2")
    grid = quadrature(energy, ((-20, 20), (-20, 20)), 400)
    (x0, x1), (y0, y1) = mass_window(grid, mass=1e-3, pad=0.0)
    # the 0.1% and 99.9% quantiles of N(0, 1) and N(0, 9): ±3.09 and ±9.27
    assert x0 == pytest.approx(-3.09, abs=0.15) and x1 == pytest.approx(3.09, abs=0.15)
    assert y0 == pytest.approx(-9.27, abs=0.15) and y1 == pytest.approx(9.27, abs=0.15)


def test_split_targets_keeps_function_arguments_whole():
    assert split_targets("u1, Max(x, y) + x**2 ,u2") == ["u1", "Max(x, y) + x**2", "u2"]
    with pytest.raises(NfcliError, match="empty entry"):
        split_targets("u1,,u2")


# --- what a reader sees (issue 11, item 9) --------------------------------------------------------

LONG = "0.5*((x-1.5)/0.7)**2 + 0.1*x**4 - log(1 + exp(-3*x)) + 0.05*x**3: planar flow, K = 32"


def extent(fig: plt.Figure, artist):
    return artist.get_window_extent(fig.canvas.get_renderer())


def inside(fig: plt.Figure, box) -> bool:
    f = fig.bbox
    return box.x0 >= f.x0 - 1 and box.x1 <= f.x1 + 1 and box.y0 >= f.y0 - 1 and box.y1 <= f.y1 + 1


def texts_with(fig: plt.Figure, fragment: str) -> list:
    return [
        t for t in fig.findobj(matplotlib.text.Text) if fragment in t.get_text().replace("\n", " ")
    ]


def gaussian_images(n: int = 120) -> tuple[tuple, torch.Tensor, torch.Tensor]:
    """p = N(0, I) on (−4, 4)² and q = p with half of its mass beyond radius 2.5 missing."""
    window = ((-4.0, 4.0), (-4.0, 4.0))
    c = torch.linspace(-4, 4, n, dtype=torch.float64)
    r2 = c[None, :] ** 2 + c[:, None] ** 2
    p = torch.exp(-r2 / 2) / (2 * torch.pi)
    q = torch.where(r2 > 2.5**2, 0.5 * p, p)
    return window, q, p


def test_difference_panel_has_its_own_diverging_scale_centred_at_zero():
    window, q, p = gaussian_images()
    fig = density_2d_figure(window, q, p, ["z1", "z2"], "t")
    diff = next(ax for ax in fig.axes if ax.get_title().startswith("difference"))
    image = diff.images[0]
    assert image.get_cmap().name in {"RdBu_r", "RdBu", "coolwarm", "bwr", "seismic", "PuOr"}
    lo, hi = image.norm.vmin, image.norm.vmax
    assert lo == -hi  # centred at 0: white is "no difference"
    # its own range: the largest |q − p| (the tail deficit, ≈ 0.022), not p's peak (0.159), so
    # the deficit reaches the end of the scale instead of a pale seventh of it
    assert hi == pytest.approx(float((q - p).abs().max()))
    assert hi < 0.2 * float(p.max())
    assert image.colorbar is not None and image.colorbar.norm is image.norm
    plt.close(fig)


def test_pairs_legend_is_clear_of_the_title_and_the_panels():
    samples = torch.randn(3000, 4)
    fig = pairs_figure(samples, list("abcd"), [0, 1, 2, 3], LONG, weights=torch.rand(3000))
    fig.canvas.draw()
    (legend,) = [lg for lg in fig.findobj(matplotlib.legend.Legend)]
    box = extent(fig, legend)
    (title,) = texts_with(fig, "planar flow")
    assert not box.overlaps(extent(fig, title))
    assert inside(fig, box)
    assert not any(box.overlaps(extent(fig, ax)) for ax in panels(fig))
    plt.close(fig)


def _long_titled_figures():
    xs = torch.linspace(-3, 3, 200, dtype=torch.float64)
    curve = torch.exp(-(xs**2) / 2) / (2 * torch.pi) ** 0.5
    window, q, p = gaussian_images(40)
    zs = [torch.randn(200, 2) for _ in range(3)]
    steps = torch.arange(400, dtype=torch.float64)
    loss = 1 + torch.exp(-steps / 50)
    return {
        "density 1-D": lambda: density_1d_figure(xs, curve, curve, torch.randn(500), "x", LONG),
        "density 2-D": lambda: density_2d_figure(window, q, p, ["z1", "z2"], LONG, kl=0.01),
        "pairs": lambda: pairs_figure(torch.randn(500, 3), list("abc"), [0, 1, 2], LONG),
        "layers": lambda: layers_figure(zs, zs[0].norm(dim=1), [0, 1, 2], ["z1", "z2"], LONG),
        "loss": lambda: loss_figure(loss, loss, 100, None, LONG),
    }


@pytest.mark.parametrize("which", list(_long_titled_figures()))
def test_a_long_formula_in_a_title_is_wrapped_inside_the_figure(which):
    fig = _long_titled_figures()[which]()
    fig.canvas.draw()
    (title,) = texts_with(fig, "planar flow")
    assert "exp(-3*x)" in title.get_text()  # wrapped where it is too wide, not cut
    assert inside(fig, extent(fig, title))
    plt.close(fig)


def test_a_very_long_title_is_shortened_in_its_middle_keeping_its_end():
    formula = " + ".join(f"{i / 10}*x**{i}" for i in range(2, 80))
    window, q, p = gaussian_images(40)
    fig = density_2d_figure(window, q, p, ["z1", "z2"], f"{formula}: planar flow, K = 32", 0.01)
    fig.canvas.draw()
    (title,) = texts_with(fig, "planar flow")
    text = title.get_text()
    assert "…" in text and text.count("\n") <= 2
    assert text.startswith("0.2*x**2 + ") and text.endswith("K = 32   KL(q‖p) = 0.0100 nats")
    assert inside(fig, extent(fig, title))
    plt.close(fig)


def test_loss_axis_is_set_by_the_converged_loss_not_outliers_or_early_annealing():
    n = 4000
    steps = torch.arange(n, dtype=torch.float64)
    neg_log_z = -1.9
    beta1 = neg_log_z + 0.02 + 5 * torch.exp(-steps / 300)  # the −ELBO, down to just above −ln Z
    beta1[2500], beta1[3000] = 1e4, -1e4  # two outlying steps
    annealed = beta1 - 500 * torch.exp(-steps / 500)  # F_β: far below early in the annealing
    fig = loss_figure(annealed.float(), beta1.float(), 1500, -neg_log_z, "t")
    lo, hi = fig.axes[0].get_ylim()
    assert lo < neg_log_z < float(beta1[-1]) < hi  # the floor and the final loss are on the axis
    assert lo > -3 and hi < 10  # neither outlier nor the early F_β stretches it
    note = fig.get_supxlabel()
    assert "off the axis" in note and "F_β" in note and "below" in note and "above" in note
    plt.close(fig)


def test_layers_png_of_32_layers_stays_small(tmp_path):
    """33 panels of 3,000 draws spread over their windows, as a fitted K = 32 flow gives: 1.25 MB
    before (smooth colours, antialiased, RGBA), about 140 kB now."""
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(3000, 2, generator=g)
    scale = [torch.tensor([1 + k / 8, 1 + k / 32]) for k in range(33)]
    zs = [z0 * s + torch.tensor([math.sin(k), 0.0]) for k, s in enumerate(scale)]
    fig = layers_figure(zs, z0.norm(dim=1), default_layers(32), ["z1", "z2"], "u1, K = 32")
    path = save_figure(fig, tmp_path / "layers.png", palette=True)
    assert path.stat().st_size < 400_000


@pytest.mark.parametrize(
    ("energy", "start", "expected"),
    [("(x - 50)**2/2", (-1.0, 1.0), (46.7, 53.3)), ("x**2/2", (-1e-3, 1e-3), (-3.29, 3.29))],
)
def test_mass_range_1d_finds_the_target_away_from_or_wider_than_q(energy, start, expected):
    # the 0.05% and 99.95% quantiles of N(50, 1) and N(0, 1): ±3.29 about the mean
    lo, hi = mass_range_1d(load_energy(energy), start, torch.float64)
    assert lo == pytest.approx(expected[0], abs=0.1) and hi == pytest.approx(expected[1], abs=0.1)


def test_a_collapsed_q_does_not_flatten_p_in_the_1d_density():
    xs = torch.linspace(-4, 4, 801, dtype=torch.float64)
    p = torch.exp(-(xs**2) / 2) / (2 * torch.pi) ** 0.5
    q = torch.exp(-((xs - 0.5) ** 2) / (2 * 0.01**2)) / (0.01 * (2 * torch.pi) ** 0.5)
    fig = density_1d_figure(xs, q, p, 0.5 + 0.01 * torch.randn(2000), "x", "t")
    top = fig.axes[0].get_ylim()[1]
    assert top == pytest.approx(4.4 * float(p.max()))  # p fills a quarter of the axis, not 1/100
    assert texts_with(fig, "is above the axis")
    plt.close(fig)


# --- nfcli plot ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """Tiny fits through the CLI: 2-D (u1), 1-D and 3-D."""
    out = tmp_path_factory.mktemp("fits")
    for name, target in [("d2", "u1"), ("d1", "x**2/2"), ("d3", "(a**2 + b**2 + c**2)/2")]:
        result = run("fit", target, *TINY, "-o", out / name)
        assert result.exit_code == 0, result.output
    return out


def test_fit_writes_the_figures_for_its_dimension(fitted):
    assert {p.name for p in (fitted / "d2").glob("*.png")} == {
        "density.png",
        "layers.png",
        "loss.png",
    }
    assert {p.name for p in (fitted / "d1").glob("*.png")} == {
        "density.png",
        "layers.png",
        "loss.png",
    }
    assert {p.name for p in (fitted / "d3").glob("*.png")} == {
        "pairs.png",
        "layers.png",
        "loss.png",
    }


def test_plot_writes_images_of_the_requested_size(fitted, tmp_path):
    result = run(
        "plot", fitted / "d2" / "model.pt", "-o", tmp_path, "--dpi", "50", "--layers", "0,1,3"
    )
    assert result.exit_code == 0, result.output
    # density: 3 panels of 4.2 in + 1 in wide, (−4, 4)² is square: 4 + 0.7 in high
    assert png_size(tmp_path / "density.png") == (round(13.6 * 50), round(4.7 * 50))
    # layers: 3 panels on a 2 × 2 grid of 2.1 in cells, + 1.75 in and 1.3 in of margins
    assert png_size(tmp_path / "layers.png") == (int(5.95 * 50), round(5.5 * 50))
    assert png_size(tmp_path / "loss.png") == (350, 200)
    assert (tmp_path / "layers.png").read_bytes()[25] == 3  # PNG colour type 3: indexed colours


@pytest.mark.parametrize(("fmt", "magic"), [("pdf", b"%PDF"), ("svg", b"<?xml")])
def test_plot_writes_pdf_and_svg(fitted, tmp_path, fmt, magic):
    result = run("plot", fitted / "d3" / "model.pt", "-o", tmp_path, "--format", fmt)
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(f"{n}.{fmt}" for n in ("layers", "loss", "pairs"))
    assert all((tmp_path / n).read_bytes().startswith(magic) for n in names)


def test_plot_window_and_show(fitted, tmp_path):
    result = run("plot", fitted / "d2" / "model.pt", "-o", tmp_path, "--window=-2,2,-1,1")
    assert result.exit_code == 0, result.output
    _w, h = png_size(tmp_path / "density.png")
    assert h == round((2.5 + 0.7) * 120)  # a wide window: the panels' height is clamped at 2.5 in
    result = run("plot", fitted / "d3" / "model.pt", "-o", tmp_path, "--show", "c,a")
    assert result.exit_code == 0, result.output
    # 2 variables: a 2 × 2 corner of 2.4 in cells + 0.6 in
    assert png_size(tmp_path / "pairs.png") == (round(5.4 * 120), round(5.4 * 120))


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--format", "jpg"], "--format 'jpg' is not a figure format"),
        (["--dpi", "5"], "--dpi 5 is out of range"),
        (["--window", "1,0"], "is not a window"),
        (["--window", "a,b"], "is not a window"),
        (["--window", "1,2,3"], "is not a window"),
        (["--layers", "0,9"], "has layers 0 (the base) to 3"),
        (["--layers", "x"], "must be comma-separated whole numbers"),
        (["--show", "z1,q"], "unknown: q"),
        (["--show", "z1"], "name two or more different variables"),
    ],
)
def test_plot_bad_options(fitted, tmp_path, args, fragment):
    assert_refused(run("plot", fitted / "d2" / "model.pt", "-o", tmp_path, *args), fragment)
    assert not list(tmp_path.iterdir())  # nothing half-written


# --- nfcli compare -------------------------------------------------------------------------------


def test_compare_fits_every_combination_and_reuses_or_refuses(tmp_path):
    out = tmp_path / "cmp"
    args = ["compare", "u1,x**2/2", "--K", "1,2", "--flow", "planar,radial", "--iters", "40"]
    result = run(*args, "--dpi", "40", "-o", out)
    assert result.exit_code == 0, result.output
    assert "u1 radial K=2 (4/8) 40/40" in result.output  # one progress bar per fit
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [(r["target"], r["flow"], r["K"]) for r in rows] == [
        (t, f, k) for t in ("u1", "x**2/2") for f in ("planar", "radial") for k in ("1", "2")
    ]
    assert all(r["iters"] == "40" and r["reused"] == "False" for r in rows)
    assert rows[0]["kl_qp"] and float(rows[0]["log_z_quadrature"]) == pytest.approx(1.8775, 1e-3)
    for r in rows:
        assert Path(r["model"]).is_file()
    assert (out / "u1" / "radial-K2" / "density.png").is_file()
    # 2 rows, 1 target + 4 fits + 1 bound panel of 2.5 in, + 0.8 in and 0.5 in
    assert png_size(out / "compare.png") == (round(15.8 * 40), round(5.5 * 40))

    model = out / "u1" / "planar-K1" / "model.pt"
    before = model.read_bytes()
    again = run(*args, "-o", out)
    assert (
        again.exit_code == 2 and "--reuse" in again.output and "nothing was fitted" in again.output
    )
    reused = run(*args, "-o", out, "--reuse", "--format", "pdf")
    assert reused.exit_code == 0, reused.output
    assert (out / "compare.pdf").read_bytes().startswith(b"%PDF")
    assert all(r["reused"] == "True" for r in csv.DictReader((out / "summary.csv").open()))
    assert model.read_bytes() == before
    # different options do not match the stored fits: refused, not silently reused
    changed = run(*args[:-1], "50", "-o", out, "--reuse")
    assert changed.exit_code == 2 and "already exist" in changed.output
    assert model.read_bytes() == before


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["u1", "--K", "2,x"], "must be comma-separated whole numbers"),
        (["u1", "--K", "0"], "K = 0 is out of range"),
        (["u1", "--K", "2,2"], "give one or more different layer counts"),
        (["u1", "--flow", "planar,maf"], "give one or more different flow types"),
        (["u1,,u2"], "empty entry"),
        (["u1,foo(x)"], "unknown function 'foo'"),
        (["u1", "--format", "gif"], "is not a figure format"),
    ],
)
def test_compare_bad_input(tmp_path, args, fragment):
    assert_refused(run("compare", *args, "-o", tmp_path / "c"), fragment)
    assert not (tmp_path / "c" / "summary.csv").exists()


def test_figures_are_drawn_headless_whatever_the_environment_asks():
    code = "import nfcli.cli, matplotlib; print(matplotlib.get_backend())"
    env = {**os.environ, "MPLBACKEND": "TkAgg", "DISPLAY": ""}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().lower() == "agg"


def test_compare_takes_the_grid_from_its_command_line_not_the_config(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("K: 4\niters: 100\n")
    assert_refused(run("compare", "u1", "--config", cfg, "-o", tmp_path / "c"), "sets K:")
    assert not (tmp_path / "c").exists()


def test_write_figures_draws_a_known_q_grid_on_its_window_and_computes_q_elsewhere(
    fitted, tmp_path, monkeypatch
):
    """``known`` (ln q on density.png's grid, as run_fit computes it once for the figure and the
    report) is drawn as it is when it is on the window drawn, and not used on another."""
    ckpt = load_checkpoint(fitted / "d2" / "model.pt")
    window = preset_window(ckpt.energy_source)
    drawn = []
    density_2d_figure_ = figures.density_2d_figure

    def capture(window, q, *args, **kwargs):
        drawn.append(q)
        return density_2d_figure_(window, q, *args, **kwargs)

    monkeypatch.setattr(figures, "density_2d_figure", capture)
    fake = torch.full((figures.GRID, figures.GRID), -3.0, dtype=torch.float64)
    for known in (LogQGrid(window, figures.GRID, fake), LogQGrid(((0, 1), (0, 1)), 300, fake)):
        figures.write_figures(ckpt, None, tmp_path, known=known)
    assert torch.equal(drawn[0], fake.exp())
    torch.testing.assert_close(drawn[1], figures.density_q(ckpt.flow, window).log_q.exp())


def test_layer_panels_are_drawn_to_scale_or_say_they_are_not():
    """layers.png drew U1's 22 × 12 window in square panels, so its crescents looked like one
    thin ellipse: the window is squared (equal units), or, where the ranges differ over 4-fold,
    the title says the axes are not to scale."""
    from nfcli.plots import layers_figure, square_up

    assert square_up(((-11.0, 11.0), (-6.0, 6.0))) == ((-11.0, 11.0), (-11.0, 11.0))
    assert square_up(((0.0, 100.0), (0.0, 1.0))) == ((0.0, 100.0), (0.0, 1.0))
    torch.manual_seed(0)
    z = torch.randn(500, 2) * torch.tensor([11.0, 6.0])
    fig = layers_figure([z, z], torch.rand(500), [0, 1], ["x", "y"], "t")
    ax = fig.axes[0]
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    assert x1 - x0 == pytest.approx(y1 - y0) and "not to scale" not in fig._suptitle.get_text()
    z = torch.randn(500, 2) * torch.tensor([100.0, 1.0])
    fig = layers_figure([z, z], torch.rand(500), [0, 1], ["x", "y"], "t")
    assert "axes not to scale" in fig._suptitle.get_text()


def test_vae_images_are_framed_apart():
    """reconstructions.png had no gaps: '\\' beside '/' read as 'V'."""
    from nfcli.vae.figures import FRAME, grid_figure

    fig = grid_figure(torch.rand(4, 16), (4, 4), "t", columns=2)
    ax = fig.axes[0]
    assert ax.spines["left"].get_visible() and ax.spines["left"].get_edgecolor()[:3] == (
        pytest.approx((float(FRAME),) * 3)
    )
    assert fig.subplotpars.wspace >= 0.15
