"""--device and --dtype: float64 end to end on the CPU, checkpoints that keep their precision,
clear errors for devices that are not there, and fit's monitor hook."""

import numpy as np
import pytest
import torch
from clitools import assert_refused, run

from nfcli import FitConfig, fit, load_energy
from nfcli.checkpoint import load_checkpoint
from nfcli.devices import resolve_device, resolve_dtype
from nfcli.errors import NfcliError

TINY = ["--iters", "60", "--anneal", "20", "--K", "3"]


def test_auto_is_the_cpu_without_a_gpu_and_cuda_is_refused_clearly():
    if torch.cuda.is_available():
        assert resolve_device("auto").type == "cuda"
        pytest.skip("a GPU is visible here; the refusal cannot be tested")
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(NfcliError, match="sees no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(NfcliError, match="sees no CUDA GPU"):
        resolve_device("cuda:1")
    with pytest.raises(NfcliError, match="not a device"):
        resolve_device("tpu")
    with pytest.raises(NfcliError, match="not supported"):
        resolve_dtype("float16")


def test_float64_fit_checkpoint_and_samples(tmp_path):
    result = run("fit", "x**2/2 + y**2/2", *TINY, "--dtype", "float64", "-o", tmp_path)
    assert result.exit_code == 0, result.output
    ckpt = load_checkpoint(tmp_path / "model.pt")
    assert ckpt.config.dtype == "float64" and ckpt.report.dtype == "float64"
    assert all(p.dtype == torch.float64 for p in ckpt.flow.parameters())
    assert np.load(tmp_path / "samples.npy").dtype == np.float64
    # either precision samples the same flow (randn draws differ between dtypes, so compare moments)
    for dtype in ("float64", "float32"):
        out = tmp_path / f"s-{dtype}.npy"
        assert run("sample", tmp_path / "model.pt", "-n", "20000", "-o", out, "--dtype", dtype,
                   "--device", "cpu").exit_code == 0  # fmt: skip
    a, b = np.load(tmp_path / "s-float64.npy"), np.load(tmp_path / "s-float32.npy")
    assert a.dtype == np.float64 and b.dtype == np.float32
    np.testing.assert_allclose(a.mean(0), b.mean(0), atol=0.05)
    np.testing.assert_allclose(a.std(0), b.std(0), rtol=0.05)
    assert run("plot", tmp_path / "model.pt", "--dtype", "float32").exit_code == 0


def test_float64_fit_agrees_with_float32_on_a_gaussian():
    energy = load_energy("(x - 1)**2/2 + y**2/8")
    cfg = dict(K=2, iters=400, anneal=0, batch=512, lr=2e-2)
    means = []
    for dtype in ("float32", "float64"):
        flow = fit(energy, FitConfig(**cfg, dtype=dtype)).flow
        assert flow.base.loc.dtype == resolve_dtype(dtype)
        means.append(flow.sample(20_000, torch.Generator().manual_seed(0)).double().mean(0))
    for m in means:  # both fitted N((1, 0), diag(1, 4))
        assert abs(m[0] - 1) < 0.1 and abs(m[1]) < 0.15


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["fit", "u1", "--device", "tpu"], "--device 'tpu' is not a device"),
        (["fit", "u1", "--dtype", "half"], "--dtype 'half' is not supported"),
        (["sample", "m.pt", "--device", "gpu"], "--device 'gpu' is not a device"),
        (["plot", "m.pt", "--dtype", "float16"], "--dtype 'float16' is not supported"),
    ],
)
def test_bad_device_or_dtype(args, fragment):
    assert_refused(run(*args), fragment)


def test_monitor_sees_the_flow_every_n_steps_and_changes_nothing():
    energy = load_energy("x**2/2 + y**2/2")
    cfg = FitConfig(K=2, iters=250, anneal=50)
    seen = []
    with_monitor = fit(energy, cfg, every=100, monitor=lambda t, f: seen.append((t, f.K)))
    plain = fit(energy, cfg)
    assert seen == [(100, 2), (200, 2), (250, 2)]
    torch.testing.assert_close(with_monitor.loss, plain.loss)


def test_freed_memory_is_reused_where_glibc_allows_it():
    import platform

    from nfcli.devices import reuse_freed_memory

    done = reuse_freed_memory()
    assert reuse_freed_memory() is done  # once per process
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert done is True
