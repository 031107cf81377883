"""Base distributions (``nfcli.bases``): the registry, each base's density against
torch.distributions, and its sampler against its density."""

import pytest
import torch

from nfcli import NfcliError
from nfcli.bases import BASES, DiagonalGaussian, build_base
from nfcli.flows import Flow, architecture


@pytest.fixture(autouse=True)
def float64():
    """These tests compare densities to 1e-10: run them in float64, and restore the default."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


# --- the registry ----------------------------------------------------------------------------


def test_the_gaussian_base_is_still_importable_from_flows_and_is_the_registered_one():
    from nfcli import flows

    assert flows.DiagonalGaussian is DiagonalGaussian is BASES["diagonal_gaussian"]


@pytest.mark.parametrize("spec", [{"type": "diagonal_gaussian", "scale": 2.0}])
def test_spec_rebuilds_the_base(spec):
    base = build_base(spec, 3, restarts=2)
    assert base.spec() == spec and base.loc.shape == (2, 3)
    assert base.spec() == build_base(base.spec(), 3, 2).spec()


def test_an_unknown_base_type_is_refused_by_name():
    arch = architecture("planar", 2)
    arch["base"] = {"type": "laplace", "scale": 1.0}
    with pytest.raises(NfcliError, match=r"Unknown base distribution type 'laplace'.*diagonal"):
        Flow(2, arch)


def test_checkpoint_keys_of_a_gaussian_flow_are_unchanged():
    """Checkpoints store the state dict: the base's entries keep their names."""
    keys = set(Flow.of(2, 3, "planar").state_dict())
    assert {"base.loc", "base.log_scale"} <= keys
    assert all(k.startswith("transforms.") for k in keys - {"base.loc", "base.log_scale"})


# --- each base's density ------------------------------------------------------------------------


def reference(base) -> torch.distributions.Distribution:
    """The same distribution (restart r on the leading axis) in torch.distributions."""
    return torch.distributions.Normal(base.loc.detach(), base.log_scale.detach().exp())


def randomised(spec: dict, dim: int = 3, restarts: int = 2):
    torch.manual_seed(0)
    base = build_base(spec, dim, restarts)
    with torch.no_grad():
        for p in base.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return base


SPECS = [{"type": "diagonal_gaussian", "scale": 1.5}]


@pytest.mark.parametrize("spec", SPECS)
def test_log_prob_is_torch_distributions_density(spec):
    base = randomised(spec)
    z = 3 * torch.randn(2, 40, 3)
    expected = reference(base).log_prob(z.transpose(0, 1)).sum(-1).T
    torch.testing.assert_close(base.log_prob(z), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("spec", SPECS)
def test_rsample_log_q_is_log_prob_of_the_draws(spec):
    base = randomised(spec)
    z, log_q = base.rsample(200, torch.Generator().manual_seed(1))
    assert z.shape == (2, 200, 3) and log_q.shape == (2, 200)
    torch.testing.assert_close(log_q, base.log_prob(z), rtol=1e-10, atol=1e-10)
    again, _ = base.rsample(200, torch.Generator().manual_seed(1))
    assert torch.equal(z, again)


@pytest.mark.parametrize("spec", SPECS)
def test_select_takes_out_one_restart_of_the_base(spec):
    arch = architecture("planar", 2)
    arch["base"] = spec
    flow = Flow(3, arch, restarts=3)
    with torch.no_grad():
        for p in flow.base.parameters():
            p.add_(0.5 * torch.randn_like(p))
    z = 2 * torch.randn(3, 25, 3)
    batched = flow.base.log_prob(z)
    for r in range(3):
        single = flow.select(r).base
        torch.testing.assert_close(single.log_prob(z[r : r + 1])[0], batched[r])
