"""--threads: refused when it is not a usable count; the auto policy (one thread for small problems
and when no core is free, OMP_NUM_THREADS as the user's choice); the count set and recorded."""

import json
import os

import pytest
import torch
from clitools import assert_refused, run

from nfcli import threads as th
from nfcli.threads import Work, choose_threads, free_cores

GAUSS = "x**2/2 + y**2/2"
TINY = ["--iters", "20", "--batch", "64", "--K", "2"]
BIG = Work(rows=1024, dim=4096)  # large enough for every core the policy could give


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """These tests set torch's thread count in this process; give the next test the old one."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def eight_cpus(monkeypatch):
    """A machine with 8 CPUs, whatever this one has."""
    monkeypatch.setattr(th, "allowed_cpus", lambda: list(range(8)))
    monkeypatch.setattr(th, "cpu_count", lambda: 8)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    out = tmp_path_factory.mktemp("fit")
    result = run("fit", GAUSS, *TINY, "--threads", "1", "-o", out)
    assert result.exit_code == 0, result.output
    return out / "model.pt"


@pytest.mark.parametrize(
    "value, fragment",
    [
        ("0", "--threads '0' is not a thread count: give a positive integer"),
        ("-1", "--threads '-1' is not a thread count"),
        ("abc", "--threads 'abc' is not a thread count"),
        (str(max(999, (os.cpu_count() or 1) + 1)), "CPUs of this machine; more threads"),
    ],
)
def test_fit_refuses_a_bad_thread_count(tmp_path, value, fragment):
    result = run("fit", GAUSS, *TINY, "-o", tmp_path, "--threads", value)
    assert_refused(result, fragment)
    assert not (tmp_path / "model.pt").exists()


def test_every_command_refuses_a_bad_thread_count(model, tmp_path):
    points = tmp_path / "points.csv"
    points.write_text("0,0\n1,1\n")
    commands = [
        ("sample", model, "-n", "10", "-o", tmp_path / "s.npy"),
        ("plot", model, "-o", tmp_path),
        ("logprob", model, points),
        ("compare", GAUSS, "--K", "2", "--iters", "20", "-o", tmp_path / "cmp"),
    ]
    for args in commands:
        assert_refused(run(*args, "--threads", "0"), "--threads '0' is not a thread count")
    assert not (tmp_path / "cmp").exists()


def test_an_explicit_count_is_set_and_recorded_in_the_metrics(model, tmp_path):
    assert json.loads((model.parent / "metrics.json").read_text())["threads"] == 1
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one CPU: a second thread cannot be asked for")
    torch.set_num_threads(1)
    result = run("sample", model, "-n", "10", "-o", tmp_path / "s.npy", "--threads", "2")
    assert result.exit_code == 0, result.output
    assert torch.get_num_threads() == 2


def test_auto_gives_a_2d_problem_one_thread_without_measuring_the_load(eight_cpus):
    def never():
        raise AssertionError("the load should not be measured for a small problem")

    assert choose_threads(None, Work(1024, 2), environ={}, free=never) == 1
    assert choose_threads("auto", Work(1024 * 8, 2), environ={}, free=never) == 1


def test_auto_takes_a_second_thread_from_d_128_at_batch_1024(eight_cpus):
    # measured on a quiet 2-core machine: 1.16x at D = 64, 1.27x at D = 128 (nfcli/threads.py)
    assert choose_threads(None, Work(1024, 64), environ={}, free=lambda: 8) == 1
    assert choose_threads(None, Work(1024, 128), environ={}, free=lambda: 8) == 2
    assert choose_threads(None, Work(1024, 128), environ={}, free=lambda: 1) == 1


def test_auto_gives_one_thread_when_no_core_is_free(eight_cpus):
    assert choose_threads(None, BIG, environ={}, free=lambda: 1) == 1
    assert choose_threads(None, BIG, environ={}, free=lambda: 3) == 3
    assert choose_threads(None, BIG, environ={}, free=lambda: 8) == 8
    wanted = (1024 * 1024) // th.MIN_ELEMENTS_PER_THREAD  # a mid-sized problem asks for fewer
    assert choose_threads(None, Work(1024, 1024), environ={}, free=lambda: 8) == min(wanted, 8)


def test_omp_num_threads_is_the_users_choice_unless_threads_is_given(eight_cpus):
    assert choose_threads(None, BIG, environ={"OMP_NUM_THREADS": "2"}, free=lambda: 8) == 2
    assert choose_threads(None, Work(1024, 2), environ={"OMP_NUM_THREADS": "4"}) == 4
    assert choose_threads("3", BIG, environ={"OMP_NUM_THREADS": "2"}) == 3
    # not a positive integer: ignored, as if unset
    for bad in ("abc", "0", ""):
        assert choose_threads(None, BIG, environ={"OMP_NUM_THREADS": bad}, free=lambda: 5) == 5


def test_the_cli_keeps_omp_num_threads(model, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(2)
    result = run("sample", model, "-n", "10", "-o", tmp_path / "s.npy")
    assert result.exit_code == 0, result.output
    assert torch.get_num_threads() == 1


def test_free_cores_counts_the_idle_cpus_from_proc_stat(monkeypatch):
    # (idle, total) ticks: cpu0 idle for 9 of 10 ticks, cpu1 for 1 of 10, cpu2 not ours
    snapshots = iter([{0: (0, 0), 1: (0, 0), 2: (0, 0)}, {0: (9, 10), 1: (1, 10), 2: (10, 10)}])
    monkeypatch.setattr(th, "_cpu_times", lambda: next(snapshots))
    monkeypatch.setattr(th, "allowed_cpus", lambda: [0, 1])
    assert free_cores(sample_s=0) == 1
    snapshots = iter([{0: (0, 0), 1: (0, 0)}, {0: (1, 10), 1: (2, 10)}])
    assert free_cores(sample_s=0) == 1  # both busy: still the core this process runs on


def test_free_cores_falls_back_to_the_load_average(monkeypatch):
    def no_proc():
        raise OSError("no /proc/stat")

    monkeypatch.setattr(th, "_cpu_times", no_proc)
    monkeypatch.setattr(th, "allowed_cpus", lambda: [0, 1, 2, 3])
    for load, free in [(0.0, 4), (0.2, 4), (1.0, 3), (1.5, 2), (3.9, 1), (9.0, 1)]:
        monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, load, load))
        assert free_cores(sample_s=0) == free, load


def test_parse_threads_accepts_auto_and_spaces():
    assert th.parse_threads(None) is None
    assert th.parse_threads(" Auto ") is None
    assert th.parse_threads(" 1 ") == 1


# --- the library: fit() and run_fit() apply the same policy (issue 28) ----------------------------


def test_the_library_fit_applies_the_policy_not_torchs_default(monkeypatch):
    """A user's script calling fit() gets what the command line gets: one thread for a 2-D
    problem (it kept torch's default of one per core, 8x slower with a busy core), and the count
    recorded in the result's config."""
    from nfcli import FitConfig, fit, load_energy

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(2)
    result = fit(load_energy(GAUSS), FitConfig(iters=5, batch=64, K=2))
    assert torch.get_num_threads() == 1 and result.config.threads == 1


def test_the_library_fit_takes_a_count_and_refuses_a_bad_one(monkeypatch):
    from nfcli import FitConfig, NfcliError, fit, load_energy

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    energy = load_energy(GAUSS)
    torch.set_num_threads(1)
    cpus = th.cpu_count()
    result = fit(energy, FitConfig(iters=5, batch=64, K=2, threads=cpus))
    assert torch.get_num_threads() == cpus and result.config.threads == cpus
    with pytest.raises(NfcliError, match="is not a thread count"):
        fit(energy, FitConfig(iters=5, threads=0))
    with pytest.raises(NfcliError, match="is more than the"):
        fit(energy, FitConfig(iters=5, threads=cpus + 1))


def test_threads_in_a_config_file_are_used(tmp_path):
    (tmp_path / "c.yaml").write_text("threads: 1\niters: 20\nbatch: 64\nK: 2\n")
    result = run("fit", GAUSS, "--config", tmp_path / "c.yaml", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out/metrics.json").read_text())["threads"] == 1


def test_a_fit_that_differs_only_in_threads_is_the_same_fit():
    """compare --reuse, and what resume may change: threads say how a fit runs, not what."""
    from nfcli import FitConfig

    a, b = FitConfig(threads=1), FitConfig(threads="auto")
    assert a.to_dict() != b.to_dict() and a.fitted() == b.fitted()
