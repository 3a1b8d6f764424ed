"""Datasets and the batch plan: determinism, validation of user files, the named datasets in
their real on-disk formats (written small to tmp_path; nothing is downloaded)."""

from __future__ import annotations

import gzip
import io
import pickle
import re
import struct
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from precision_suite import data as data_mod
from precision_suite.config import DataConfig, SyntheticConfig
from precision_suite.data import DataError, batch_plan, load_dataset


# ---------------------------------------------------------------- batch plan
def test_batch_plan_same_seed_identical_different_seed_differs():
    first = batch_plan(100, 8, seed=3, epochs=2, steps=None)
    again = batch_plan(100, 8, seed=3, epochs=2, steps=None)
    other = batch_plan(100, 8, seed=4, epochs=2, steps=None)
    assert len(first) == 2 * (100 // 8)
    assert all(e1 == e2 and np.array_equal(a, b) for (e1, a), (e2, b) in zip(first, again, strict=True))
    assert any(not np.array_equal(a, b) for (_, a), (_, b) in zip(first, other, strict=True))


def test_batch_plan_epochs_are_permutations_of_full_batches_and_steps_win():
    plan = batch_plan(50, 16, seed=0, epochs=3, steps=None)
    for epoch in range(3):
        rows = np.concatenate([r for e, r in plan if e == epoch])
        assert len(rows) == 48 and len(set(rows.tolist())) == 48  # 2 rows dropped, no repeats
        assert all(len(r) == 16 for e, r in plan if e == epoch)
    by_steps = batch_plan(50, 16, seed=0, epochs=1, steps=7)
    assert len(by_steps) == 7 and [e for e, _ in by_steps] == [0, 0, 0, 1, 1, 1, 2]
    with pytest.raises(DataError, match="batch_size 64 is larger than the training set"):
        batch_plan(10, 64, seed=0, epochs=1, steps=None)


# ---------------------------------------------------------------- digits, synthetic
def test_digits_is_standardised_with_train_statistics_and_split_fixed():
    first = load_dataset(DataConfig())
    second = load_dataset(DataConfig())
    assert first.x_train.shape[1:] == (1, 8, 8) and first.x_train.dtype == np.float32
    assert first.num_classes == 10 and first.y_train.dtype == np.int64
    assert abs(first.x_train.mean()) < 1e-5 and abs(first.x_train.std() - 1) < 1e-5
    np.testing.assert_array_equal(first.x_test, second.x_test)
    assert len(first.x_test) == round(1797 * 0.2)


def test_synthetic_is_deterministic_balanced_and_learnable():
    cfg = DataConfig(
        name="synthetic",
        synthetic=SyntheticConfig(shape=[3, 8, 8], num_classes=4, train_size=400, test_size=100),
    )
    ds, again = load_dataset(cfg), load_dataset(cfg)
    assert ds.x_train.shape == (400, 3, 8, 8) and ds.x_test.shape == (100, 3, 8, 8)
    assert ds.num_classes == 4 and np.bincount(ds.y_train).tolist() == [100] * 4
    np.testing.assert_array_equal(ds.x_train, again.x_train)
    np.testing.assert_array_equal(ds.y_test, again.y_test)
    # Learnable: the nearest training-class mean already classifies most test rows.
    flat = ds.x_train.reshape(400, -1)
    means = np.stack([flat[ds.y_train == c].mean(0) for c in range(4)])
    dist = ((ds.x_test.reshape(100, 1, -1) - means[None]) ** 2).sum(-1)
    assert (dist.argmin(1) == ds.y_test).mean() > 0.8
    np.testing.assert_allclose(ds.x_train.mean((0, 2, 3)), 0, atol=1e-5)


def test_synthetic_label_noise_replaces_that_fraction_of_labels_and_nothing_else():
    clean = SyntheticConfig(shape=[40], num_classes=10, train_size=4000, test_size=2000)
    noisy = clean.model_copy(update={"label_noise": 0.2})
    a = load_dataset(DataConfig(name="synthetic", synthetic=clean))
    b = load_dataset(DataConfig(name="synthetic", synthetic=noisy))
    np.testing.assert_array_equal(a.x_train, b.x_train)
    changed = (a.y_train != b.y_train).mean()
    # 20 % redrawn uniformly: 9 in 10 of those land on another class.
    assert 0.16 < changed < 0.20
    assert (a.y_test != b.y_test).mean() > 0.15
    np.testing.assert_array_equal(b.y_test, load_dataset(DataConfig(name="synthetic", synthetic=noisy)).y_test)


@pytest.mark.parametrize(("shape", "expected"), [([20], (20,)), ([6, 6], (1, 6, 6))])
def test_synthetic_vector_and_grayscale_shapes(shape, expected):
    ds = load_dataset(DataConfig(name="synthetic", synthetic=SyntheticConfig(shape=shape, train_size=30, test_size=10)))
    assert ds.input_shape == expected


def test_synthetic_rejects_an_unusable_rank():
    cfg = DataConfig(name="synthetic", synthetic=SyntheticConfig(shape=[1, 2, 3, 4]))
    with pytest.raises(DataError, match=r"data.synthetic.shape: expected \[F\], \[H, W\] or \[C, H, W\]"):
        load_dataset(cfg)


# ---------------------------------------------------------------- npz
def _arrays(n_train: int = 12, n_test: int = 6, shape: tuple[int, ...] = (1, 4, 4), k: int = 3):
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.standard_normal((n_train, *shape)).astype(np.float32) * 3 + 5,
        "y_train": np.arange(n_train) % k,
        "x_test": rng.standard_normal((n_test, *shape)).astype(np.float32) * 3 + 5,
        "y_test": np.arange(n_test) % k,
    }


def _npz(tmp_path: Path, arrays: dict, name: str = "user.npz") -> Path:
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def test_npz_loads_and_normalises_with_train_statistics_only(tmp_path):
    arrays = _arrays()
    ds = load_dataset(DataConfig(name="npz", path=str(_npz(tmp_path, arrays))))
    mean, std = arrays["x_train"].astype(np.float64).mean(), arrays["x_train"].astype(np.float64).std()
    np.testing.assert_allclose(ds.x_test, (arrays["x_test"] - mean) / std, rtol=1e-5, atol=1e-5)
    assert ds.num_classes == 3 and ds.y_train.dtype == np.int64 and ds.input_shape == (1, 4, 4)


def test_npz_grayscale_gets_a_channel_and_vectors_stay_flat(tmp_path):
    gray = {**_arrays(), "x_train": np.zeros((12, 5, 7), np.uint8), "x_test": np.ones((6, 5, 7), np.uint8)}
    assert load_dataset(DataConfig(name="npz", path=str(_npz(tmp_path, gray)))).input_shape == (1, 5, 7)
    vec = _arrays(shape=(9,))
    assert load_dataset(DataConfig(name="npz", path=str(_npz(tmp_path, vec, "v.npz")))).input_shape == (9,)


def test_npz_many_channel_small_images_are_not_mistaken_for_channels_last(tmp_path):
    arrays = _arrays(shape=(16, 4, 4))
    ds = load_dataset(DataConfig(name="npz", path=str(_npz(tmp_path, arrays))))
    assert ds.input_shape == (16, 4, 4)


def test_npz_declared_num_classes_is_used(tmp_path):
    arrays = {**_arrays(), "num_classes": np.int64(5)}
    assert load_dataset(DataConfig(name="npz", path=str(_npz(tmp_path, arrays)))).num_classes == 5


def _with(**changes):
    arrays = _arrays()
    for key, value in changes.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    return arrays


_NAN = _arrays()["x_train"].copy()
_NAN[4, 0, 1, 1] = np.nan
_INF = _arrays()["x_test"].copy()
_INF[2, 0, 0, 0] = np.inf

MALFORMED = {
    "missing key": (_with(y_test=None), r"missing key 'y_test'; expected x_train, y_train, x_test, y_test"),
    "rank 1 features": (
        _with(x_train=np.zeros(12, np.float32)),
        r"x_train has shape \(12,\); expected images",
    ),
    "rank 5 features": (
        _with(x_test=np.zeros((6, 1, 1, 4, 4), np.float32)),
        r"x_test has shape \(6, 1, 1, 4, 4\)",
    ),
    "label out of range": (
        _with(y_test=np.array([0, 1, 2, 3, 0, 1])),
        r"y_test has label 3 \(row 3\) out of range for 3 classes",
    ),
    "negative label": (
        _with(y_train=np.array([0, 1, 2] * 3 + [0, -1, 2])),
        r"y_train has negative label -1 \(row 10\)",
    ),
    "float labels": (
        _with(y_train=(np.arange(12) % 3).astype(np.float32)),
        r"y_train has dtype float32; expected integer class labels",
    ),
    "one-hot labels": (
        _with(y_train=np.eye(3, dtype=np.int64)[np.arange(12) % 3]),
        r"y_train has shape \(12, 3\).*one-hot",
    ),
    "label count": (_with(y_test=np.array([0, 1, 2])), r"y_test has 3 labels but x_test has 6 rows"),
    "NaN in features": (_with(x_train=_NAN), r"x_train has NaN or inf values in 1 row \(first at row 4\)"),
    "inf in features": (_with(x_test=_INF), r"x_test has NaN or inf values in 1 row \(first at row 2\)"),
    "shapes differ": (
        _with(x_test=np.zeros((6, 1, 5, 5), np.float32)),
        r"x_train rows have shape \(1, 4, 4\) but x_test rows \(1, 5, 5\)",
    ),
    "channels last": (
        _with(x_train=np.zeros((12, 8, 8, 3), np.float32), x_test=np.zeros((6, 8, 8, 3), np.float32)),
        r"looks channels-last",
    ),
    "text features": (_with(x_train=np.array([["a"] * 3] * 12)), r"x_train has dtype <U1; expected numbers"),
    "single class": (_with(y_train=np.zeros(12, np.int64), y_test=np.zeros(6, np.int64)), r"single class"),
    "bad num_classes": (
        {**_arrays(), "num_classes": np.array([3, 4])},
        r"num_classes must be one integer >= 2",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_npz_is_rejected_naming_file_and_problem(tmp_path, case):
    arrays, message = MALFORMED[case]
    path = _npz(tmp_path, arrays)
    with pytest.raises(DataError, match=message) as info:
        load_dataset(DataConfig(name="npz", path=str(path)))
    text = str(info.value)
    assert text.startswith(str(path)) and "\n" not in text


def test_npz_that_is_not_there_or_not_an_npz(tmp_path):
    with pytest.raises(DataError, match=r"nope.npz: no such file"):
        load_dataset(DataConfig(name="npz", path=str(tmp_path / "nope.npz")))
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip at all")
    with pytest.raises(DataError, match=r"junk.npz: is a text file \(first line 'not a zip at all'\)"):
        load_dataset(DataConfig(name="npz", path=str(junk)))
    objects = tmp_path / "objects.npz"
    np.savez(objects, **{**_arrays(), "y_train": np.array([0, "a"] * 6, dtype=object)})
    with pytest.raises(DataError, match=r"objects.npz: not a readable .npz file \(member 'y_train': "):
        load_dataset(DataConfig(name="npz", path=str(objects)))


def _npy_renamed(tmp_path: Path) -> Path:
    path = tmp_path / "array.npy"
    np.save(path, _arrays()["x_train"])
    return path.rename(tmp_path / "user.npz")


def _damaged_compressed(tmp_path: Path) -> Path:
    """``np.savez_compressed`` with bytes inside the first member's deflate stream flipped."""
    import zipfile

    path = tmp_path / "user.npz"
    np.savez_compressed(path, **_arrays(n_train=200))
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        first = archive.infolist()[0]
    start = first.header_offset + 30 + len(first.filename.encode()) + len(first.extra)
    for i in range(start + 16, start + 48):
        raw[i] ^= 0x5A
    path.write_bytes(bytes(raw))
    return path


def _labels(tmp_path: Path, y_train: np.ndarray) -> Path:
    return _npz(tmp_path, {**_arrays(n_train=len(y_train)), "y_train": y_train})


def _csv(tmp_path: Path) -> Path:
    path = tmp_path / "user.npz"
    path.write_text("x0,x1,x2,label\n0.1,0.2,0.3,1\n")
    return path


def _directory(tmp_path: Path) -> Path:
    path = tmp_path / "user.npz"
    path.mkdir()
    return path


# Inputs that used to crash with a traceback, or run silently on wrong labels: each must be a
# one-line error, exit 2, before any job runs.
BAD_NPZ_FILES = {
    ".npy file": (_npy_renamed, r"is a single \.npy array \(np\.save\), not an \.npz archive"),
    "damaged compressed member": (
        _damaged_compressed,
        r"not a readable \.npz file \(member 'x_train': .*(decompress|CRC)",
    ),
    "uint64 label >= 2^63": (
        lambda tmp: _labels(tmp, np.array([0, 1, 2] * 3 + [0, 1, 2**63 + 5], dtype=np.uint64)),
        r"y_train has label 9223372036854775813 \(row 11\), beyond any class index",
    ),
    "sentinel label": (
        lambda tmp: _labels(tmp, np.array([0, 1, 2] * 3 + [0, 1, 2147483647])),
        r"largest label is 2147483647, so the inferred class count would be 2147483648, but only 4 classes "
        r"occur in 12 training rows; .* declare num_classes",
    ),
    "stray label 999": (
        lambda tmp: _labels(tmp, np.array([0, 1, 2, 3] * 30 + [999])),
        r"largest label is 999, .*1000, but only 5 classes occur in 121 training rows",
    ),
    "CSV renamed .npz": (_csv, r"is a CSV text file \(first line 'x0,x1,x2,label'\), not an \.npz archive"),
    "directory": (_directory, r"is a directory; expected an \.npz file written by np\.savez"),
}


@pytest.mark.parametrize("case", list(BAD_NPZ_FILES))
def test_bad_npz_file_exits_2_with_one_line_and_runs_nothing(tmp_path, capsys, case):
    from precision_suite.cli import main

    make, message = BAD_NPZ_FILES[case]
    path = make(tmp_path)
    out = tmp_path / "run"
    smoke = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"
    code = main(["run", str(smoke), "--out", str(out), "--set", "data.name=npz", "--set", f"data.path={path}"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"error: {smoke}"), lines[0]
    assert f"data: {path}:" in lines[0]
    assert re.search(message, lines[0]), lines[0]
    assert not out.exists(), "nothing may run on bad data"


def test_declared_num_classes_allows_what_inference_refuses(tmp_path):
    y_train = np.array([0, 1, 2, 3] * 30 + [999])
    arrays = {**_arrays(n_train=len(y_train)), "y_train": y_train, "num_classes": np.int64(1000)}
    assert load_dataset(DataConfig(name="npz", path=str(_npz(tmp_path, arrays)))).num_classes == 1000


# ---------------------------------------------------------------- mnist / fashion_mnist / cifar10
@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv(data_mod.OFFLINE_ENV, "1")

    def no_network(*args, **kwargs):
        raise AssertionError("the loader touched the network while offline")

    monkeypatch.setattr(data_mod.urllib.request, "urlopen", no_network)


def _mnist_like(n_train: int = 20, n_test: int = 10) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": (np.arange(n_train) % 10).astype(np.uint8),
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": (np.arange(n_test) % 10).astype(np.uint8),
    }


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_idx(folder: Path, arrays: dict[str, np.ndarray], gz: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    names = {
        "x_train": "train-images-idx3-ubyte",
        "y_train": "train-labels-idx1-ubyte",
        "x_test": "t10k-images-idx3-ubyte",
        "y_test": "t10k-labels-idx1-ubyte",
    }
    for key, stem in names.items():
        raw = _idx_bytes(arrays[key])
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / stem).write_bytes(raw)


def _expected_images(x: np.ndarray, train: np.ndarray) -> np.ndarray:
    # Per-channel train statistics, images (N, C, H, W).
    train = train.astype(np.float64)
    mean = train.mean((0, 2, 3), keepdims=True)
    std = train.std((0, 2, 3), keepdims=True)
    return (x.astype(np.float64) - mean) / std


def test_mnist_from_the_keras_npz_in_the_cache(tmp_path, offline):
    arrays = _mnist_like()
    (tmp_path / "mnist").mkdir()
    np.savez(tmp_path / "mnist" / "mnist.npz", **arrays)
    ds = load_dataset(DataConfig(name="mnist", cache_dir=str(tmp_path)))
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10 and len(ds.x_test) == 10
    expected = _expected_images(arrays["x_test"][:, None], arrays["x_train"][:, None])
    np.testing.assert_allclose(ds.x_test, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(ds.y_train, arrays["y_train"])


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_from_the_original_idx_files_via_data_path(tmp_path, offline, gz):
    arrays = _mnist_like()
    _write_idx(tmp_path / "fm", arrays, gz)
    ds = load_dataset(DataConfig(name="fashion_mnist", path=str(tmp_path / "fm")))
    assert ds.name == "fashion_mnist" and ds.input_shape == (1, 28, 28)
    expected = _expected_images(arrays["x_train"][:, None], arrays["x_train"][:, None])
    np.testing.assert_allclose(ds.x_train, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(ds.y_test, arrays["y_test"])


def test_truncated_idx_file_is_named(tmp_path, offline):
    _write_idx(tmp_path / "m", _mnist_like(), gz=False)
    path = tmp_path / "m" / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: truncated IDX file"):
        load_dataset(DataConfig(name="mnist", path=str(tmp_path / "m")))


def _cifar_batches(per_batch: int = 4) -> tuple[dict[str, bytes], np.ndarray, np.ndarray]:
    """The CIFAR-10 python batches (a dict pickled with bytes keys, data (n, 3072) uint8 in
    C, H, W order, labels a list) and the images/labels they hold, train then test."""
    rng = np.random.default_rng(2)
    files, images, labels = {}, [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, (per_batch, 3, 32, 32), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, per_batch)]
        files[name] = pickle.dumps({b"data": x.reshape(per_batch, -1), b"labels": y, b"batch_label": b"x"})
        images.append(x)
        labels.append(y)
    return files, np.concatenate(images), np.concatenate(labels)


def _write_cifar_tar(path: Path, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, raw in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))


def test_cifar10_from_the_original_tarball_in_the_cache(tmp_path, offline):
    files, images, labels = _cifar_batches()
    (tmp_path / "cifar10").mkdir()
    _write_cifar_tar(tmp_path / "cifar10" / "cifar-10-python.tar.gz", files)
    ds = load_dataset(DataConfig(name="cifar10", cache_dir=str(tmp_path)))
    assert ds.input_shape == (3, 32, 32) and len(ds.x_train) == 20 and len(ds.x_test) == 4
    np.testing.assert_array_equal(np.concatenate([ds.y_train, ds.y_test]), labels)
    expected = _expected_images(images[20:], images[:20])
    np.testing.assert_allclose(ds.x_test, expected, rtol=1e-5, atol=1e-5)


def test_cifar10_from_the_extracted_folder_and_channels_last_npz_agree(tmp_path, offline):
    files, images, labels = _cifar_batches()
    folder = tmp_path / "x" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, raw in files.items():
        (folder / name).write_bytes(raw)
    from_dir = load_dataset(DataConfig(name="cifar10", path=str(tmp_path / "x")))
    npz = tmp_path / "cifar10.npz"
    # Keras' load_data() hands out channels-last arrays and (N, 1) labels.
    np.savez(
        npz,
        x_train=images[:20].transpose(0, 2, 3, 1),
        y_train=labels[:20, None],
        x_test=images[20:].transpose(0, 2, 3, 1),
        y_test=labels[20:, None],
    )
    from_npz = load_dataset(DataConfig(name="cifar10", path=str(npz)))
    np.testing.assert_array_equal(from_dir.x_train, from_npz.x_train)
    np.testing.assert_array_equal(from_dir.y_test, from_npz.y_test)


def test_cifar10_pickle_that_would_run_code_is_refused(tmp_path, offline):
    files, _, _ = _cifar_batches()
    files["test_batch"] = pickle.dumps({b"data": Path("evil")})  # pathlib.PosixPath is not allowed
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name, raw in files.items():
        (folder / name).write_bytes(raw)
    with pytest.raises(DataError, match=r"test_batch: not a CIFAR-10 python batch \(refusing to load pathlib"):
        load_dataset(DataConfig(name="cifar10", path=str(folder)))


def test_named_dataset_offline_without_files_says_what_to_put_where(tmp_path, offline):
    with pytest.raises(DataError) as info:
        load_dataset(DataConfig(name="mnist", cache_dir=str(tmp_path)))
    text = str(info.value)
    assert f"no data in {tmp_path / 'mnist'}" in text and "PRECISION_SUITE_OFFLINE" in text
    assert "mnist.npz (keys x_train (N, 28, 28) uint8, y_train, x_test, y_test)" in text
    assert "train-images-idx3-ubyte[.gz]" in text and "\n" not in text
    with pytest.raises(DataError, match=r"data.path '.*missing.npz' does not exist; point it at cifar10.npz"):
        load_dataset(DataConfig(name="cifar10", path=str(tmp_path / "missing.npz")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"holds no fashion_mnist data; expected fashion_mnist.npz"):
        load_dataset(DataConfig(name="fashion_mnist", path=str(tmp_path / "empty")))


def test_named_dataset_download_failure_is_fast_and_clean(tmp_path, monkeypatch):
    monkeypatch.delenv(data_mod.OFFLINE_ENV, raising=False)
    calls = []

    def unreachable(url, timeout):
        calls.append((url, timeout))
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(data_mod.urllib.request, "urlopen", unreachable)
    with pytest.raises(DataError, match=r"download of https://\S+/mnist.npz failed: Name or service not known"):
        load_dataset(DataConfig(name="mnist", cache_dir=str(tmp_path)))
    assert len(calls) == 1 and calls[0][1] <= data_mod.DOWNLOAD_TIMEOUT_S
    assert not list((tmp_path / "mnist").glob("*.part"))


class _FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_named_dataset_downloads_into_the_cache_and_checks_the_hash(tmp_path, monkeypatch):
    monkeypatch.delenv(data_mod.OFFLINE_ENV, raising=False)
    arrays = _mnist_like()
    served = {
        "train-images-idx3-ubyte.gz": arrays["x_train"],
        "train-labels-idx1-ubyte.gz": arrays["y_train"],
        "t10k-images-idx3-ubyte.gz": arrays["x_test"],
        "t10k-labels-idx1-ubyte.gz": arrays["y_test"],
    }
    monkeypatch.setattr(
        data_mod.urllib.request,
        "urlopen",
        lambda url, timeout: _FakeResponse(gzip.compress(_idx_bytes(served[url.rsplit("/", 1)[1]]))),
    )
    ds = load_dataset(DataConfig(name="fashion_mnist", cache_dir=str(tmp_path)))
    assert sorted(p.name for p in (tmp_path / "fashion_mnist").iterdir()) == sorted(served)
    np.testing.assert_array_equal(ds.y_train, arrays["y_train"])
    # mnist.npz has a published SHA-256: a different payload is refused and not cached.
    monkeypatch.setattr(data_mod.urllib.request, "urlopen", lambda url, timeout: _FakeResponse(b"tampered"))
    with pytest.raises(DataError, match="SHA-256 mismatch"):
        load_dataset(DataConfig(name="mnist", cache_dir=str(tmp_path)))
    assert list((tmp_path / "mnist").iterdir()) == []


def test_named_dataset_with_wrong_image_size_is_rejected(tmp_path, offline):
    arrays = {
        **_mnist_like(),
        "x_test": np.zeros((10, 32, 32), np.uint8),
        "x_train": np.zeros((20, 32, 32), np.uint8),
    }
    path = tmp_path / "mnist.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=r"mnist.npz: images have shape \(1, 32, 32\); expected \(1, 28, 28\)"):
        load_dataset(DataConfig(name="mnist", path=str(path)))


# ---------------------------------------------------------------- digits
@pytest.mark.parametrize("sklearn_file_found", [True, False])
def test_digits_are_scikit_learns_load_digits(monkeypatch, sklearn_file_found):
    """The digits arrays, read from scikit-learn's CSV without importing it (or through
    load_digits where the file is not found), are load_digits' own, value for value and dtype."""
    from sklearn.datasets import load_digits

    if not sklearn_file_found:
        monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    images, target = data_mod._digits_arrays()
    reference = load_digits()
    assert images.dtype == reference.images.dtype and target.dtype == reference.target.dtype
    assert np.array_equal(images, reference.images) and np.array_equal(target, reference.target)


def test_loading_digits_does_not_import_scikit_learn():
    import subprocess
    import sys

    code = (
        "import sys; from precision_suite.config import DataConfig; from precision_suite.data import load_dataset;"
        " ds = load_dataset(DataConfig()); print(len(ds.x_train), len(ds.x_test), 'sklearn' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["1438", "359", "False"]
