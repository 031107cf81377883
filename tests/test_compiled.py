"""The compiled energy of the training loop (issue 18): what ``choose_energy`` decides, the
fallback when compiling fails, and that a fit through a compiled U is wired like the eager one.
(A real torch.compile takes tens of seconds: benchmarks/compile_energy.py measures it.)"""

import pytest
import torch

import nfcli.compiled as compiled
from nfcli.compiled import choose_energy
from nfcli.config import FitConfig
from nfcli.energy import load_energy
from nfcli.errors import NfcliError
from nfcli.train import fit

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
