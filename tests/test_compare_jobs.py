"""nfcli compare --jobs N: the fits run in worker processes and give what one at a time gives;
a worker's error is the usual one-paragraph refusal; Ctrl-C stops the workers, exit 130."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from clitools import assert_refused, run

import nfcli.compare
from nfcli.checkpoint import load_checkpoint
from nfcli.compare import worker_threads

# 2-D, a built-in and an expression (rebuilt in the workers from their source), 2 K each
TINY = ["u1,x**2/2 + (2*y - x)**2", "--K", "1,2", "--iters", "200", "--batch", "64"]


def rows(folder: Path) -> list[dict[str, str]]:
    """summary.csv without what may differ between runs: the wall time, and the folder."""
    table = list(csv.DictReader((folder / "summary.csv").open()))
    for r in table:
        assert Path(r.pop("model")).parent.parent.parent == folder
        r.pop("wall_time_s")
    return table


def test_two_jobs_give_the_fits_of_one_at_a_time(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert run("compare", *TINY, "--dpi", "30", "-o", one).exit_code == 0
    result = run("compare", *TINY, "--dpi", "30", "--jobs", "2", "-o", two)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "--jobs 2: up to 2 fits at a time" in text and "done 4/4: " in text
    assert "200/200" not in text  # no progress bars
    assert rows(one) == rows(two) and len(rows(two)) == 4
    models = sorted(one.glob("*/*/model.pt"))
    assert len(models) == 4
    for model in models:
        a, b = load_checkpoint(model), load_checkpoint(two / model.relative_to(one))
        assert a.flow.state_dict().keys() == b.flow.state_dict().keys()
        for name, value in a.flow.state_dict().items():
            assert torch.equal(value, b.flow.state_dict()[name]), (model, name)
        assert torch.equal(a.history["loss"], b.history["loss"])
        samples = model.with_name("samples.npy")
        assert samples.read_bytes() == (two / samples.relative_to(one)).read_bytes()
    assert (two / "compare.png").stat().st_size > 0
    again = run("compare", *TINY, "--dpi", "30", "--jobs", "2", "--reuse", "-o", two)
    assert again.exit_code == 0, again.output
    assert all(r["reused"] == "True" for r in rows(two))


def test_each_worker_gets_the_threads_of_one_fit_at_most_its_share_of_the_cores(monkeypatch):
    monkeypatch.setattr(nfcli.compare, "allowed_cpus", lambda: list(range(8)))
    assert [worker_threads(n, 8) for n in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]
    assert [worker_threads(n, 1) for n in (1, 2)] == [1, 1]  # a fit that wants one keeps one
    assert worker_threads(2, 3) == 3  # never more than one fit would use


def test_jobs_must_be_positive(tmp_path):
    assert_refused(run("compare", "u1", "--jobs", "0", "-o", tmp_path / "c"), "--jobs 0 is not")
    assert not (tmp_path / "c").exists()


def test_an_error_in_a_worker_is_the_usual_refusal(tmp_path):
    """An energy file that runs here but fails in a worker process: one paragraph, exit 2."""
    energy = tmp_path / "only_here.py"
    energy.write_text(
        "import multiprocessing\n"
        "if multiprocessing.parent_process() is not None:\n"
        "    raise RuntimeError('not in a worker')\n"
        "DIM = 1\n"
        "def energy(z):\n"
        "    return (z**2).sum(1) / 2\n"
    )
    out = tmp_path / "c"
    result = run("compare", energy, "--K", "1,2", "--iters", "50", "--jobs", "2", "-o", out)
    assert_refused(result, "raised RuntimeError (not in a worker)")
    assert not list(out.rglob("model.pt")) and not (out / "summary.csv").exists()


def test_ctrl_c_stops_every_worker_and_exits_130(tmp_path):
    """Ctrl-C in a terminal reaches the whole process group: the parent cancels, the workers
    (fits that cannot finish in time) stop without writing a model.pt, and nothing is left."""
    out, log = tmp_path / "c", tmp_path / "log"
    args = ["u1,u2,u3", "--K", "2", "--iters", "1000000", "--batch", "64", "--jobs", "2"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "nfcli", "compare", *args, "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    try:
        deadline = time.monotonic() + 60
        while "--jobs 2: " not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        time.sleep(3)  # the workers start (fitting yet or not, the outcome must be the same)
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=60) == 130, log.read_text()
    finally:
        if _alive_in_group(proc.pid):  # a failed test leaves no fits running
            os.killpg(proc.pid, signal.SIGKILL)
    text = " ".join(log.read_text().split())
    assert "interrupted" in text and "Traceback" not in text and "done 1/" not in text
    assert not list(out.rglob("model.pt")) and not list(out.rglob("*.tmp"))
    deadline = time.monotonic() + 30
    while _alive_in_group(proc.pid):  # the workers are gone (the parent waited for them)
        assert time.monotonic() < deadline, "a worker process outlived nfcli compare"
        time.sleep(0.1)


def _alive_in_group(pgid: int) -> bool:
    """Whether a process of the group other than a zombie is still running (Linux /proc)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False
