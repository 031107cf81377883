"""The trust report as a dataclass: metrics.json's dict comes back exactly (keys, order, values)
from a fit's report, from an older nfcli's dict that lacks newer keys, and from one with keys this
nfcli does not know."""

import json

import pytest
import torch
from clitools import run

from nfcli.checkpoint import load_checkpoint
from nfcli.energy import load_energy
from nfcli.report import Quadrature, TrustReport
from nfcli.run import run_fit
from nfcli.train import FitConfig

# metrics.json of a 2-D fit whose k̂ is good, key by key, as nfcli has written it since replicates
# ("start" since issue 13; start_source, start_elbo and converged_step only from the mode;
# energy_share since issue 18, for fits on the CPU; sampler and sampler_reason since issue 27)
KEYS = [
    "target", "dim", "vars", "K", "flow", "restarts_fitted", "device", "threads", "dtype", "iters",
    "anneal", "steps_done", "stopped", "stop_message", "start", "nonfinite_energies",
    "nonfinite_gradients", "skipped_steps", "final_loss", "final_loss_beta1", "wall_time_s",
    "iters_per_s", "energy_share", "elbo", "elbo_se", "log_z_is", "log_z_is_se", "ess_fraction",
    "khat", "khat_verdict", "monte_carlo_samples", "nonfinite_samples", "replicate_sets",
    "khat_replicates", "ess_fraction_replicates", "log_z_is_replicates", "log_z_quadrature",
    "kl_qp", "kl_qp_se", "kl_pq", "tv", "quadrature_window", "quadrature_edge_mass", "warnings",
]  # fmt: skip
RESTART_KEYS = ["restarts", "restart_kept", "restarts_log_z_spread", "restarts_log_z_noise"]
# the verdict, then where samples.npy's draws came from (since issue 27; "chains" only with MCMC)
VERDICT_KEYS = ["verdict", "verdict_reasons", "sampler", "sampler_reason"]
# what nfcli wrote before replicates, restarts, annealing, stopping and event counts were recorded
NEWER = [
    "start", "restarts_fitted", "device", "threads", "dtype", "anneal", "steps_done", "stopped",
    "stop_message", "nonfinite_energies", "nonfinite_gradients", "skipped_steps",
    "nonfinite_samples", "replicate_sets", "khat_replicates", "ess_fraction_replicates",
    "log_z_is_replicates",
]  # fmt: skip


@pytest.fixture(scope="module", params=[1, 2], ids=["one-fit", "two-restarts"])
def fitted(request, tmp_path_factory):
    """A tiny 2-D fit through run_fit: its report, and the folder with model.pt and metrics.json."""
    out = tmp_path_factory.mktemp("fit")
    config = FitConfig(K=2, iters=50, batch=64, restarts=request.param)
    _, report = run_fit(load_energy("0.5*(x**2+y**2)"), config, output=out)
    return report, out


def metrics_dict(out) -> dict:
    return json.loads((out / "metrics.json").read_text())


def test_metrics_json_is_the_reports_dict_with_every_key_in_its_place(fitted):
    report, out = fitted
    text = (out / "metrics.json").read_text()
    assert text == json.dumps(report.to_dict(), indent=2, allow_nan=True) + "\n"
    d = metrics_dict(out)
    restarts = RESTART_KEYS if report.restarts_fitted > 1 else []
    assert list(d) == KEYS + restarts + VERDICT_KEYS
    assert d["stopped"] is None and d["stop_message"] == "" and d["threads"] >= 1
    assert d["kl_qp"] == report.kl_qp == report.quadrature.kl_qp
    assert isinstance(report.quadrature, Quadrature) and report.quadrature.note is None
    assert report.absent == frozenset() and report.extra == {}


def test_a_fits_dict_round_trips_with_its_key_order(fitted):
    _, out = fitted
    d = metrics_dict(out)
    back = TrustReport.from_dict(d).to_dict()
    assert back == d and list(back) == list(d)
    saved = load_checkpoint(out / "model.pt")  # the checkpoint holds the same dict
    assert json.dumps(saved.report.to_dict(), indent=2) == json.dumps(d, indent=2)


def test_an_old_dict_without_the_newer_keys_round_trips_and_prints(fitted, tmp_path):
    report, out = fitted
    old = {k: v for k, v in metrics_dict(out).items() if k not in NEWER + RESTART_KEYS}
    r = TrustReport.from_dict(old)
    assert r.to_dict() == old  # nothing added: "stopped": None was not written back then
    assert r.stopped is None and r.steps_done is None and r.khat_replicates is None
    assert r.counts == {} and r.restarts is None and {"stopped", "anneal"} <= r.absent
    # a checkpoint holding it loads, and nfcli report prints it
    data = torch.load(out / "model.pt", weights_only=True)
    data["metrics"] = old
    torch.save(data, tmp_path / "model.pt")
    assert load_checkpoint(tmp_path / "model.pt").report.to_dict() == old
    result = run("report", tmp_path / "model.pt")
    assert result.exit_code == 0, result.output
    assert f"{report.elbo:.4f} ± {report.elbo_se:.4f}" in result.output
    assert "sets of" not in result.output  # one set of draws, as before replicates


def test_unknown_keys_are_kept_and_written_back(fitted):
    _, out = fitted
    d = metrics_dict(out)
    items = list(d.items())
    future = dict([*items[:5], ("from_a_newer_nfcli", {"a": [1, 2]}), *items[5:]])
    r = TrustReport.from_dict(future)
    assert r.extra == {"from_a_newer_nfcli": {"a": [1, 2]}}
    back = r.to_dict()
    assert back == future and list(back) == [*list(d), "from_a_newer_nfcli"]


def test_a_failed_quadrature_keeps_its_none_values_and_note(fitted):
    """In 2-D, a quadrature that found no finite ln Z writes its keys as null and a note instead
    of the edge mass; elsewhere than 2-D no quadrature key is written at all."""
    _, out = fitted
    d = metrics_dict(out)
    failed = {}
    for k, v in d.items():
        if k == "quadrature_edge_mass":
            failed["quadrature_note"] = "p has no mass where q is"
        elif k in ("log_z_quadrature", "kl_qp", "kl_qp_se", "kl_pq", "tv"):
            failed[k] = None
        else:
            failed[k] = v
    r = TrustReport.from_dict(failed)
    assert r.quadrature.log_z is None and r.kl_qp is None and r.quadrature.note
    back = r.to_dict()
    assert back == failed and list(back) == list(failed)
    one_d = {
        k: v
        for k, v in d.items()
        if "quadrature" not in k and k not in ("kl_qp", "kl_qp_se", "kl_pq", "tv")
    }
    r = TrustReport.from_dict(one_d)
    assert r.quadrature is None and r.kl_qp is None and r.to_dict() == one_d
