"""The compiled energy of the training loop (issue 18): what ``choose_energy`` decides, the
fallback when compiling fails, and that a fit through a compiled U is wired like the eager one.
(A real torch.compile takes tens of seconds: benchmarks/compile_energy.py measures it.)"""

import json

import pytest
import torch
from clitools import assert_refused
from clitools import run as run_cli

import nfcli.compiled as compiled
import nfcli.transforms as transforms
from nfcli.compiled import choose_energy
from nfcli.config import FitConfig
from nfcli.energy import load_energy
from nfcli.errors import NfcliError
from nfcli.train import fit
from nfcli.transforms import planar_chain as chain

FILE = "DIM = 2\n\n\ndef energy(z):\n    return 0.5 * (z**2).sum(-1)\n"


@pytest.fixture
def file_energy(tmp_path):
    path = tmp_path / "gauss.py"
    path.write_text(FILE)
    return load_energy(str(path))


def test_off_and_an_expression_stay_eager_without_timing():
    energy = load_energy("u1")
    z = (8, 2)
    for mode in ("off", "auto"):
        chosen = choose_energy(energy, mode, z, 1000)
        assert chosen.fn is energy and not chosen.compiled and chosen.eager_ms is None


def test_auto_times_a_cheap_file_energy_and_leaves_it_eager(file_energy):
    chosen = choose_energy(file_energy, "auto", (64, 2), 1000)
    assert not chosen.compiled and chosen.fn is file_energy
    assert chosen.eager_ms is not None and "not compiled" in chosen.note


def test_auto_compiles_when_the_eager_calls_would_cost_more(file_energy, monkeypatch):
    monkeypatch.setattr(compiled, "time_eager", lambda energy, z: 100.0)  # 100 ms a call
    monkeypatch.setattr(torch, "compile", lambda fn, dynamic: lambda z: fn(z))
    chosen = choose_energy(file_energy, "auto", (8, 2), 10_000)  # 1,000 s eager
    assert chosen.compiled and "compiled" in chosen.note and "100.00 ms" in chosen.note


def test_a_failed_compilation_falls_back_to_the_eager_energy_and_says_why(file_energy, monkeypatch):
    def broken(fn, dynamic):
        def call(z):
            raise RuntimeError("no C++ compiler")

        return call

    monkeypatch.setattr(torch, "compile", broken)
    chosen = choose_energy(file_energy, "on", (8, 2), 10)
    assert not chosen.compiled and chosen.fn is file_energy
    assert "compiling U failed (RuntimeError: no C++ compiler)" in chosen.note


def test_a_fit_through_a_compiled_u_is_the_eager_fit_when_the_compiled_u_is_exact(monkeypatch):
    """With a stand-in for torch.compile that runs U unchanged, --compile-energy on gives the
    same fit bit for bit (the probe points come from their own generator), and says so."""
    energy = load_energy("u1")
    config = FitConfig(K=2, iters=30, batch=32)
    eager = fit(energy, FitConfig(**{**config.to_dict(), "compile_energy": "off"}))
    monkeypatch.setattr(torch, "compile", lambda fn, dynamic: lambda z: fn(z))
    on = fit(energy, FitConfig(**{**config.to_dict(), "compile_energy": "on"}))
    assert torch.equal(on.loss, eager.loss) and on.energy_compiled.startswith("compiled")
    for name, value in eager.flow.state_dict().items():
        assert torch.equal(on.flow.state_dict()[name], value)
    assert eager.energy_compiled is None


def test_an_unknown_mode_is_refused():
    with pytest.raises(NfcliError, match="--compile-energy sometimes"):
        FitConfig(compile_energy="sometimes").validate(2)


# --- the compiled flow ----------------------------------------------------------------------------


@pytest.fixture
def quick_backend(monkeypatch, tmp_path):
    """torch.compile's aot_eager backend (traced and differentiated as the real one, without the
    C++ compilation), and a torch cache folder of the test's own for nfcli's records."""
    monkeypatch.setattr(compiled, "FLOW_BACKEND", "aot_eager")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache"))
    torch._dynamo.reset()


@pytest.mark.parametrize(
    "options", [{"flow": "planar", "K": 3}, {"flow": "spline", "K": 1, "hidden": [8], "bins": 4}]
)
def test_a_fit_through_the_compiled_flow_is_the_eager_fit_to_rounding(
    quick_backend, options, monkeypatch
):
    """The traced flow (the planar layers as ``planar_chain``, not ``PlanarStack``) fits as the
    eager one: the same draws, losses and parameters to float32 rounding after 40 steps."""
    energy = load_energy("u1")
    config = {**options, "iters": 40, "batch": 32, "start": "origin", "converge": False}
    eager = fit(energy, FitConfig(**config, compile_flow="off"))
    traced = []
    monkeypatch.setattr(transforms, "planar_chain", lambda *a: traced.append(1) or chain(*a))
    on = fit(energy, FitConfig(**config, compile_flow="on"))
    assert bool(traced) == (options["flow"] == "planar")  # traced once, then run compiled
    assert eager.flow_compiled is None and on.flow_compiled.startswith("compiled (its step takes")
    torch.testing.assert_close(on.loss, eager.loss, rtol=1e-4, atol=1e-4)
    for name, value in eager.flow.state_dict().items():
        torch.testing.assert_close(on.flow.state_dict()[name], value, rtol=1e-4, atol=1e-5)
    assert not torch.equal(on.flow.state_dict()["base.loc"], fit(energy, FitConfig(**{
        **config, "seed": 1, "compile_flow": "on"})).flow.state_dict()["base.loc"])  # fmt: skip


def test_a_failed_flow_compilation_falls_back_to_the_eager_fit_and_says_why(monkeypatch):
    def broken(fn, dynamic, backend):
        def call(eps):
            raise RuntimeError("no C++ compiler")

        return call

    energy = load_energy("u1")
    config = {"K": 2, "iters": 20, "batch": 16}
    eager = fit(energy, FitConfig(**config, compile_flow="off"))
    monkeypatch.setattr(torch, "compile", broken)
    on = fit(energy, FitConfig(**config, compile_flow="on"))
    assert "compiling the flow failed (RuntimeError: no C++ compiler)" in on.flow_compiled
    assert torch.equal(on.loss, eager.loss)
    for name, value in eager.flow.state_dict().items():
        assert torch.equal(on.flow.state_dict()[name], value)


def test_auto_compiles_the_flow_by_its_expected_saving_and_what_was_measured(quick_backend):
    """Without a record, auto expects FLOW_SAVED of the eager time saved against a cold
    compilation; a record of an earlier compilation gives the measured saving against a cached
    one, and a compiled step that was not faster is not compiled again however long the fit."""
    from nfcli.flows import Flow

    flow = Flow.of(2, 3, "planar")
    shape = (1, 16, 2)
    short = compiled.choose_flow(flow, "auto", shape, 10)
    assert (
        not short.compiled
        and short.fn == flow.push
        and "less than 2 × a compilation" in (short.note)
    )
    record = compiled.flow_record(flow, compiled.probe_points(shape, "cpu", torch.float32),
                                  "aot_eager")  # fmt: skip
    assert record is not None and not record.exists()
    record.parent.mkdir(parents=True)
    first = {"eager_ms": 10.0, "compiled_ms": 1.0, "compiling_s": 100.0, "cached": False}
    record.write_text(json.dumps(first))  # compiling saved 90%, and took 100 s
    assert compiled.read_record(record).cached_s == compiled.FLOW_CACHED_SHARE * 100
    steps = 2 * 40 / (0.9 * long_eager_ms(flow, shape)) * 1000  # saves ~2 × 40 s
    assert not compiled.choose_flow(flow, "auto", shape, int(steps * 0.5)).compiled_ms
    long = compiled.choose_flow(flow, "auto", shape, int(steps * 2))
    assert long.compiled_ms is not None and record.exists()  # compiled, timed and recorded
    now = compiled.read_record(record)
    assert (now.compiled_ms, now.eager_ms) == (long.compiled_ms, long.eager_ms) and now.cached
    assert long.compiled == (now.compiled_ms < now.eager_ms)  # used only where it was faster
    record.write_text(json.dumps({**first, "compiled_ms": 20.0}))  # compiled was slower
    slower = compiled.choose_flow(flow, "auto", shape, 10**9)
    assert not slower.compiled and "measured: 20.00 ms compiled" in slower.note


def long_eager_ms(flow, shape):
    """The eager step as choose_flow times it (at most; the timing varies)."""
    eps = compiled.probe_points(shape, "cpu", torch.float32)
    return max(compiled.time_flow(flow.push, flow, eps, 3) for _ in range(3))


def test_an_unknown_flow_compile_mode_is_refused():
    with pytest.raises(NfcliError, match="--compile-flow sometimes"):
        FitConfig(compile_flow="sometimes").validate(2)


def test_the_command_refuses_an_unknown_flow_compile_mode(tmp_path):
    result = run_cli("fit", "u1", "--compile-flow", "maybe", "-o", tmp_path / "out")
    assert_refused(result, "--compile-flow maybe: choose auto")
    assert not (tmp_path / "out").exists()
