"""Datasets and the batch plan shared by every backend.

Inputs are canonical: images (N, C, H, W), vectors (N, F), float32, normalised once here in
NumPy (training-set mean/std, per channel for images) so every backend sees identical values;
labels int64 in [0, num_classes).

Sources: ``digits`` (scikit-learn, bundled), ``synthetic`` (generated, any shape), ``npz`` (a
user file with x_train, y_train, x_test, y_test), ``mnist`` / ``fashion_mnist`` / ``cifar10``
(``data.path`` or the cache folder ``data.cache_dir``/<name>/ in Keras' .npz form or the
original files; downloaded into the cache when missing and the network allows).
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import os
import pickle
import struct
import tarfile
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from precision_suite.config import DataConfig
from precision_suite.errors import UserError, first_line


class DataError(UserError, ValueError):
    """Data the user pointed at that cannot be used; the message names the file and problem."""


@dataclass
class Dataset:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


# Set to 1 to never touch the network (CI, tests): a missing file is then an error at once.
OFFLINE_ENV = "PRECISION_SUITE_OFFLINE"
DOWNLOAD_TIMEOUT_S = 15.0
_ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, name: str) -> Dataset:
    # The split is fixed (not per seed) so every seed and backend is scored on the same test set.
    order = np.random.default_rng(12345).permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return Dataset(name, x[train], y[train], x[test], y[test], int(y.max()) + 1)


def _moments(x: np.ndarray, axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (biased) std over ``axes`` in float64, two passes over row chunks so a large
    training set never needs a full float64 copy."""
    chunk = max(1, (1 << 22) // max(1, int(np.prod(x.shape[1:]))))
    count = len(x) * int(np.prod([x.shape[a] for a in axes if a != 0]))
    total = sum(x[i : i + chunk].sum(axis=axes, dtype=np.float64, keepdims=True) for i in range(0, len(x), chunk))
    mean = total / count
    sq = sum(np.square(x[i : i + chunk] - mean).sum(axis=axes, keepdims=True) for i in range(0, len(x), chunk))
    return mean, np.sqrt(sq / count)


def _standardise(ds: Dataset) -> Dataset:
    """Zero mean, unit variance from training-set statistics only, applied to both splits:
    per channel for images (N, C, H, W), one mean/std for vectors (N, F). Statistics in
    float64; the arrays become float32."""
    axes = (0, 2, 3) if ds.x_train.ndim == 4 else tuple(range(ds.x_train.ndim))
    mean, std = _moments(ds.x_train, axes)
    std = np.where(std > 0, std, 1.0)
    mean32, inv_std32 = mean.astype(np.float32), (1.0 / std).astype(np.float32)
    ds.x_train = (ds.x_train.astype(np.float32) - mean32) * inv_std32
    ds.x_test = (ds.x_test.astype(np.float32) - mean32) * inv_std32
    return ds


# ---------------------------------------------------------------- digits, synthetic
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: images (1797, 8, 8) and targets, as ``sklearn.datasets.load_digits``
    returns them. Read from the CSV scikit-learn ships, as load_digits reads it, without
    importing scikit-learn (1.5-2 s in every worker that starts, several per run); through
    load_digits itself where that file is not where scikit-learn 1.x keeps it."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # finds the package without running it
    for folder in (spec and spec.submodule_search_locations) or []:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, mode="rt", encoding="utf-8") as fh:
                data = np.loadtxt(fh, delimiter=",")
            return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int, copy=False)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images, bunch.target


def load_digits_dataset(cfg: DataConfig) -> Dataset:
    images, target = _digits_arrays()
    x = images.astype(np.float32)[:, None, :, :]  # (1797, 1, 8, 8)
    y = target.astype(np.int64)
    return _standardise(_split(x, y, cfg.test_fraction, "digits"))


def load_synthetic_dataset(cfg: DataConfig) -> Dataset:
    """Gaussian classes around random class means: deterministic in the config alone (the same
    data for every seed and backend) and learnable, so throughput runs report sane losses.
    The class means shrink with the feature count so the distance between them is the same at
    any shape: learnable, never trivially separable by one pixel."""
    syn = cfg.synthetic
    shape = tuple(syn.shape)
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) not in (1, 3):
        raise DataError(f"data.synthetic.shape: expected [F], [H, W] or [C, H, W], got {list(syn.shape)}")
    k = syn.num_classes
    rng = np.random.default_rng([0x5EED, k, syn.train_size, syn.test_size, *shape])
    n_features = int(np.prod(shape))
    means = rng.standard_normal((k, *shape), dtype=np.float32) * np.float32(4.0 / np.sqrt(n_features))

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.permutation(np.arange(n) % k).astype(np.int64)
        x = rng.standard_normal((n, *shape), dtype=np.float32)
        x += means[y]
        return x, y

    x_train, y_train = draw(syn.train_size)
    x_test, y_test = draw(syn.test_size)
    if syn.label_noise:
        for y in (y_train, y_test):
            noisy = rng.random(len(y)) < syn.label_noise
            y[noisy] = rng.integers(0, k, int(noisy.sum()))
    return _standardise(Dataset("synthetic", x_train, y_train, x_test, y_test, k))


# ---------------------------------------------------------------- validation
def _count(n: int, noun: str) -> str:
    """``1 row``, ``3 rows``, ``2 classes``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}{'es' if noun.endswith('s') else 's'}"


def _check_features(x: np.ndarray, key: str, source: str) -> np.ndarray:
    if x.size == 0:
        raise DataError(f"{source}: {key} is empty (shape {x.shape})")
    if x.dtype.kind not in "biuf":
        raise DataError(f"{source}: {key} has dtype {x.dtype}; expected numbers")
    if x.ndim == 3:
        x = x[:, None, :, :]  # (N, H, W) grayscale → one channel
    if x.ndim not in (2, 4):
        raise DataError(
            f"{source}: {key} has shape {x.shape}; expected images (N, C, H, W) or (N, H, W), or vectors (N, F)"
        )
    # Square images with 1, 3 or 4 values on the last axis are almost surely channels-last;
    # read as (N, C, H, W) they would train, badly, on scrambled pixels.
    if x.ndim == 4 and x.shape[1] == x.shape[2] > 4 and x.shape[3] in (1, 3, 4):
        raise DataError(
            f"{source}: {key} has shape {x.shape}, which looks channels-last (N, H, W, C); "
            "save it channels-first (N, C, H, W), e.g. x.transpose(0, 3, 1, 2)"
        )
    if x.dtype.kind == "f":
        bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
        if bad.any():
            raise DataError(
                f"{source}: {key} has NaN or inf values in {_count(int(bad.sum()), 'row')} "
                f"(first at row {int(np.argmax(bad))})"
            )
    return x


def _check_labels(y: np.ndarray, key: str, n_rows: int, source: str) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]  # (N, 1) column of labels, as Keras' CIFAR loader returns
    if y.ndim != 1:
        raise DataError(
            f"{source}: {key} has shape {y.shape}; expected class indices of shape (N,)"
            + (" (one-hot labels? use y.argmax(1))" if y.ndim == 2 else "")
        )
    if y.dtype.kind not in "iu":
        raise DataError(f"{source}: {key} has dtype {y.dtype}; expected integer class labels (e.g. y.astype(np.int64))")
    if len(y) != n_rows:
        x_key = key.replace("y_", "x_")
        raise DataError(f"{source}: {key} has {_count(len(y), 'label')} but {x_key} has {_count(n_rows, 'row')}")
    if len(y) and y.min() < 0:
        row = int(np.argmax(y < 0))
        raise DataError(
            f"{source}: {key} has negative label {int(y[row])} (row {row}); labels must be "
            "class indices 0..num_classes-1"
        )
    if len(y) and y.max() > np.iinfo(np.int64).max:
        # Checked before the cast: a uint64 label >= 2^63 would become negative in int64.
        row = int(np.argmax(y > np.iinfo(np.int64).max))
        raise DataError(
            f"{source}: {key} has label {int(y[row])} (row {row}), beyond any class index; labels must be "
            "class indices 0..num_classes-1"
        )
    return y.astype(np.int64)


def _inferred_num_classes(y_train: np.ndarray, source: str) -> int:
    """max(y_train) + 1, unless that is implausible for the data: more classes than training
    rows, or most classes with no training row (a sentinel label like 2147483647 or a stray 999
    would otherwise build a huge head, or run out of memory on the one-hot)."""
    num_classes = int(y_train.max()) + 1
    present = len(np.unique(y_train))
    if num_classes > len(y_train) or present < num_classes / 2:
        raise DataError(
            f"{source}: y_train's largest label is {num_classes - 1}, so the inferred class count would be "
            f"{num_classes}, but only {_count(present, 'class')} occur in {_count(len(y_train), 'training row')}; "
            "fix the stray labels, or, if you mean it, declare num_classes in the file "
            "(np.savez(path, ..., num_classes=K))"
        )
    return num_classes


def validate_arrays(
    arrays: dict[str, np.ndarray],
    source: str,
    num_classes: int | None = None,
    image_shape: tuple[int, int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Check raw (x_train, y_train, x_test, y_test) and return them canonical (features as
    given but (N, H, W) → (N, 1, H, W); labels int64) with the number of classes. Every
    problem is a one-line ``DataError`` starting with ``source``. Without ``num_classes`` it
    is max(y_train) + 1, and a test label beyond it is out of range (a class never trained on).
    ``image_shape`` (C, H, W) pins the images of a named dataset; there channels-last
    (N, H, W, C) inputs are transposed, since the shape says which axis is which."""
    missing = [k for k in _ARRAY_KEYS if k not in arrays]
    if missing:
        raise DataError(
            f"{source}: missing key {', '.join(repr(m) for m in missing)}; expected "
            f"{', '.join(_ARRAY_KEYS)} (has: {', '.join(sorted(arrays)) or 'nothing'})"
        )
    xs: dict[str, np.ndarray] = {}
    ys: dict[str, np.ndarray] = {}
    for split in ("train", "test"):
        x = np.asarray(arrays[f"x_{split}"])
        if image_shape is not None and x.ndim == 4 and x.shape[1:] == image_shape[1:] + (image_shape[0],):
            x = x.transpose(0, 3, 1, 2)
        xs[split] = _check_features(x, f"x_{split}", source)
        ys[split] = _check_labels(np.asarray(arrays[f"y_{split}"]), f"y_{split}", len(x), source)
    if xs["train"].shape[1:] != xs["test"].shape[1:]:
        raise DataError(
            f"{source}: x_train rows have shape {xs['train'].shape[1:]} but x_test rows "
            f"{xs['test'].shape[1:]}; they must match"
        )
    if image_shape is not None and xs["train"].shape[1:] != tuple(image_shape):
        raise DataError(
            f"{source}: images have shape {xs['train'].shape[1:]}; expected {tuple(image_shape)} "
            "(C, H, W) or its channels-last form"
        )
    declared = num_classes is not None
    if num_classes is None:
        num_classes = _inferred_num_classes(ys["train"], source)
    if num_classes < 2:
        raise DataError(f"{source}: y_train has a single class; need at least two")
    for split in ("train", "test"):
        y = ys[split]
        if y.max() >= num_classes:
            row = int(np.argmax(y >= num_classes))
            why = "" if declared else " (max y_train label + 1: a class never trained on)"
            raise DataError(
                f"{source}: y_{split} has label {int(y[row])} (row {row}) out of range for {num_classes} classes{why}"
            )
    return xs["train"], ys["train"], xs["test"], ys["test"], num_classes


_NPZ_HOWTO = "np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"


def _what_file_is(head: bytes) -> str:
    """What a file that is not an .npz archive looks like, from its first bytes."""
    if not head:
        return "an empty file"
    if head.startswith(b"\x93NUMPY"):
        return "a single .npy array (np.save), not an .npz archive"
    if head.startswith(b"\x80"):
        return "a Python pickle, not an .npz archive"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"not an .npz archive (a zip of .npy arrays); it starts with bytes {head[:8]!r}"
    first_line = text.splitlines()[0] if text.splitlines() else text
    kind = "a CSV text file" if "," in first_line or "\t" in first_line else "a text file"
    shown = first_line if len(first_line) <= 40 else first_line[:37] + "..."
    return f"{kind} (first line {shown!r}), not an .npz archive"


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if path.is_dir():
        raise DataError(f"{path}: is a directory; expected an .npz file written by {_NPZ_HOWTO}")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    if not head.startswith(b"PK"):  # every zip archive (so every .npz) starts with "PK"
        raise DataError(f"{path}: is {_what_file_is(head)}; write one with {_NPZ_HOWTO}")
    member = None
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {}
            for member in npz.files:
                arrays[member] = npz[member]
            return arrays
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        where = f"member {member!r}: " if member is not None else ""
        raise DataError(f"{path}: not a readable .npz file ({where}{reason})") from None


def _npz_num_classes(arrays: dict[str, np.ndarray], source: str) -> int | None:
    if "num_classes" not in arrays:
        return None
    value = np.asarray(arrays["num_classes"])
    if value.ndim != 0 or value.dtype.kind not in "iu" or int(value) < 2:
        raise DataError(f"{source}: num_classes must be one integer >= 2, got {value.tolist()!r}")
    return int(value)


def load_npz_dataset(cfg: DataConfig) -> Dataset:
    """A user file with x_train, y_train, x_test, y_test (and optionally num_classes)."""
    path = Path(cfg.path or "").expanduser()
    arrays = _read_npz(path)
    x_train, y_train, x_test, y_test, k = validate_arrays(arrays, str(path), _npz_num_classes(arrays, str(path)))
    return _standardise(Dataset("npz", x_train.astype(np.float32), y_train, x_test.astype(np.float32), y_test, k))


# ---------------------------------------------------------------- named datasets
@dataclass(frozen=True)
class _Download:
    url: str
    filename: str
    sha256: str | None  # None where no published hash is known


@dataclass(frozen=True)
class _Named:
    name: str
    image_shape: tuple[int, int, int]
    num_classes: int
    npz_name: str
    # What the loader downloads into the cache when the network allows (Keras' sources).
    downloads: tuple[_Download, ...]
    originals: str  # the original files, as the error message describes them


_KERAS_BASE = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_CIFAR_TAR = "cifar-10-python.tar.gz"
_CIFAR_DIR = "cifar-10-batches-py"

_NAMED: dict[str, _Named] = {
    "mnist": _Named(
        "mnist",
        (1, 28, 28),
        10,
        "mnist.npz",
        (
            _Download(
                _KERAS_BASE + "mnist.npz",
                "mnist.npz",
                "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1",
            ),
        ),
        "the four original IDX files " + ", ".join(f"{f}[.gz]" for f in _IDX_FILES),
    ),
    "fashion_mnist": _Named(
        "fashion_mnist",
        (1, 28, 28),
        10,
        "fashion_mnist.npz",
        tuple(_Download(_KERAS_BASE + f + ".gz", f + ".gz", None) for f in _IDX_FILES),
        "the four original IDX files " + ", ".join(f"{f}[.gz]" for f in _IDX_FILES),
    ),
    "cifar10": _Named(
        "cifar10",
        (3, 32, 32),
        10,
        "cifar10.npz",
        (
            _Download(
                "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                _CIFAR_TAR,
                "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
            ),
        ),
        f"the original {_CIFAR_TAR} or its extracted {_CIFAR_DIR}/ folder",
    ),
}


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (the original MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", raw[4:header]) if len(raw) >= header else ()
    data = np.frombuffer(raw, np.uint8, offset=min(header, len(raw)))
    if len(dims) != ndim or data.size != int(np.prod(dims)):
        raise DataError(f"{path}: truncated IDX file (header says shape {dims})")
    return data.reshape(dims)


def _find_idx(folder: Path) -> dict[str, Path] | None:
    found: dict[str, Path] = {}
    for stem in _IDX_FILES:
        for candidate in (folder / f"{stem}.gz", folder / stem):
            if candidate.is_file():
                found[stem] = candidate
                break
    return found if len(found) == len(_IDX_FILES) else None


def _idx_arrays(files: dict[str, Path]) -> dict[str, np.ndarray]:
    read = {stem: _read_idx(path) for stem, path in files.items()}
    return {
        "x_train": read["train-images-idx3-ubyte"],
        "y_train": read["train-labels-idx1-ubyte"],
        "x_test": read["t10k-images-idx3-ubyte"],
        "y_test": read["t10k-labels-idx1-ubyte"],
    }


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """The CIFAR batches are pickles; allow only what rebuilding NumPy arrays needs, so a
    tampered file cannot run code (Keras' loader does the same)."""

    _ALLOWED = frozenset(
        {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _cifar_batch(raw: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
        batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
        data = np.asarray(batch["data"], np.uint8)
        labels = np.asarray(batch["labels"])
        return data.reshape(len(data), 3, 32, 32), labels
    except Exception as exc:  # any damage to the pickle means the same thing to the user
        raise DataError(f"{source}: not a CIFAR-10 python batch ({exc})") from None


def _cifar_arrays(members: dict[str, Callable[[], bytes]], source: str) -> dict[str, np.ndarray]:
    names = [f"data_batch_{i}" for i in range(1, 6)]
    missing = [n for n in [*names, "test_batch"] if n not in members]
    if missing:
        raise DataError(f"{source}: missing CIFAR-10 batch files {', '.join(missing)}")
    train = [_cifar_batch(members[n](), f"{source}/{n}") for n in names]
    x_test, y_test = _cifar_batch(members["test_batch"](), f"{source}/test_batch")
    return {
        "x_train": np.concatenate([x for x, _ in train]),
        "y_train": np.concatenate([y for _, y in train]),
        "x_test": x_test,
        "y_test": y_test,
    }


def _cifar_from_tar(path: Path) -> dict[str, np.ndarray]:
    try:
        with tarfile.open(path, "r:*") as tar:
            members = {
                Path(m.name).name: m for m in tar.getmembers() if m.isfile() and Path(m.name).parent.name == _CIFAR_DIR
            }
            readers = {
                name: (lambda m=m: tar.extractfile(m).read())  # type: ignore[union-attr]
                for name, m in members.items()
            }
            return _cifar_arrays(readers, str(path))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable tar.gz archive ({exc})") from None


def _cifar_from_dir(folder: Path) -> dict[str, np.ndarray]:
    readers = {p.name: p.read_bytes for p in folder.iterdir() if p.is_file()}
    return _cifar_arrays(readers, str(folder))


def _read_named_source(spec: _Named, where: Path) -> tuple[dict[str, np.ndarray], str] | None:
    """The raw arrays of ``spec`` from a file or folder ``where`` in any accepted form, with
    the path they came from; None if ``where`` holds none of the forms."""
    if where.is_file():
        if where.name.endswith(".npz"):
            return _read_npz(where), str(where)
        if spec.name == "cifar10" and where.name.endswith((".tar.gz", ".tgz", ".tar")):
            return _cifar_from_tar(where), str(where)
        return None
    if not where.is_dir():
        return None
    if (where / spec.npz_name).is_file():
        return _read_npz(where / spec.npz_name), str(where / spec.npz_name)
    if spec.name == "cifar10":
        for folder in (where / _CIFAR_DIR, where):
            if (folder / "test_batch").is_file():
                return _cifar_from_dir(folder), str(folder)
        if (where / _CIFAR_TAR).is_file():
            return _cifar_from_tar(where / _CIFAR_TAR), str(where / _CIFAR_TAR)
        return None
    idx = _find_idx(where)
    return (_idx_arrays(idx), str(where)) if idx else None


def _download(item: _Download, folder: Path) -> None:
    """Fetch one file into ``folder`` atomically (a ``.part`` file renamed on success), checking
    its SHA-256 where known. Raises OSError/ValueError with the reason on any failure."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / item.filename
    partial = folder / (item.filename + ".part")
    digest = hashlib.sha256()
    try:
        with (
            urllib.request.urlopen(item.url, timeout=DOWNLOAD_TIMEOUT_S) as response,
            open(partial, "wb") as out,
        ):
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if item.sha256 and digest.hexdigest() != item.sha256:
            raise ValueError(f"{item.url}: SHA-256 mismatch (corrupted or changed download)")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def _named_forms(spec: _Named) -> str:
    channels = "(N, 28, 28)" if spec.image_shape[0] == 1 else "(N, 3, 32, 32) or (N, 32, 32, 3)"
    return f"{spec.npz_name} (keys x_train {channels} uint8, y_train, x_test, y_test) or {spec.originals}"


def load_named_dataset(cfg: DataConfig) -> Dataset:
    """mnist / fashion_mnist / cifar10 from ``data.path`` (a file or folder) if given, else
    from ``data.cache_dir``/<name>/, downloading into that cache first when a file is missing
    and the network allows (not with PRECISION_SUITE_OFFLINE=1)."""
    spec = _NAMED[cfg.name]
    if cfg.path:
        where = Path(cfg.path).expanduser()
        if not where.exists():
            raise DataError(
                f"data.path {str(where)!r} does not exist; point it at {_named_forms(spec)}, or a folder holding them"
            )
        found = _read_named_source(spec, where)
        if found is None:
            raise DataError(f"data.path {str(where)!r} holds no {spec.name} data; expected {_named_forms(spec)}")
    else:
        folder = Path(cfg.cache_dir).expanduser() / spec.name
        found = _read_named_source(spec, folder)
        if found is None:
            reason = "network access disabled by PRECISION_SUITE_OFFLINE"
            if os.environ.get(OFFLINE_ENV, "") not in ("1", "true", "yes"):
                reason = ""
                for item in spec.downloads:
                    if (folder / item.filename).is_file():
                        continue
                    try:
                        _download(item, folder)
                    except (OSError, ValueError, http.client.HTTPException) as exc:
                        why = getattr(exc, "reason", None) or exc  # URLError wraps the cause
                        reason = f"download of {item.url} failed: {why}"
                        break
            found = _read_named_source(spec, folder) if not reason else None
            if found is None:
                raise DataError(
                    f"dataset {spec.name}: no data in {folder} ({reason or 'download incomplete'}"
                    f"); put {_named_forms(spec)} in that folder, or set data.path to them"
                )
    arrays, source = found
    x_train, y_train, x_test, y_test, k = validate_arrays(arrays, source, spec.num_classes, spec.image_shape)
    return _standardise(Dataset(spec.name, x_train.astype(np.float32), y_train, x_test.astype(np.float32), y_test, k))


# ---------------------------------------------------------------- python: the user's loader
def _check_python_labels(y: Any, key: str, n_rows: int, source: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim not in (1, 2):
        raise DataError(
            f"{source}: {key} has shape {y.shape}; expected class indices of shape (N,) or one per position (N, T)"
        )
    if y.dtype.kind not in "iu":
        raise DataError(f"{source}: {key} has dtype {y.dtype}; expected integer class labels (e.g. y.astype(np.int64))")
    if len(y) != n_rows:
        raise DataError(f"{source}: {key} has {_count(len(y), 'row')} but {key.replace('y_', 'x_')} has {n_rows}")
    if y.size and y.min() < 0:
        raise DataError(f"{source}: {key} has negative label {int(y.min())}; labels must be class indices 0..K-1")
    return y.astype(np.int64)


def load_python_dataset(cfg: DataConfig) -> Dataset:
    """``data.loader``'s arrays, as the user's function returns them: ``() -> {x_train, y_train,
    x_test, y_test[, num_classes]}``. Inputs keep their shape and dtype (float inputs become
    float32; token ids stay integers) and are not standardised (the loader owns its
    preprocessing); labels are class indices of shape (N,) or one per position (N, T)."""
    from precision_suite.models import UserCodeError, resolve_import

    source = f"data.loader {cfg.loader}"
    try:
        loader = resolve_import(str(cfg.loader), "data.loader")
    except UserCodeError as exc:
        raise DataError(str(exc)) from None
    try:
        arrays = loader()
    except Exception as exc:  # the user's code failing is a data problem, reported in one line
        raise DataError(f"{source} raised {type(exc).__name__}: {first_line(exc)}") from None
    if not isinstance(arrays, dict):
        raise DataError(
            f"{source} returned {type(arrays).__name__}; expected a dict with keys {', '.join(_ARRAY_KEYS)}"
        )
    missing = [k for k in _ARRAY_KEYS if k not in arrays]
    if missing:
        raise DataError(
            f"{source}: the dict it returned has no {', '.join(missing)} (has: {', '.join(map(str, arrays))})"
        )
    xs, ys = {}, {}
    for split in ("train", "test"):
        x = np.asarray(arrays[f"x_{split}"])
        if x.ndim < 2 or x.size == 0 or x.dtype.kind not in "biuf":
            raise DataError(f"{source}: x_{split} has shape {x.shape} and dtype {x.dtype}; expected numbers, (N, ...)")
        if x.dtype.kind == "f":
            x = x.astype(np.float32)
            if not np.isfinite(x).all():
                raise DataError(f"{source}: x_{split} has NaN or inf values")
        xs[split] = x if x.dtype.kind == "f" else x.astype(np.int64)
        ys[split] = _check_python_labels(arrays[f"y_{split}"], f"y_{split}", len(x), source)
    if xs["train"].shape[1:] != xs["test"].shape[1:] or ys["train"].shape[1:] != ys["test"].shape[1:]:
        raise DataError(
            f"{source}: train rows have shape {xs['train'].shape[1:]} (labels {ys['train'].shape[1:]}) but test rows "
            f"{xs['test'].shape[1:]} (labels {ys['test'].shape[1:]}); they must match"
        )
    declared = arrays.get("num_classes")
    if declared is not None:
        if not isinstance(declared, int | np.integer) or int(declared) < 2:
            raise DataError(f"{source}: num_classes must be one integer >= 2, got {declared!r}")
        num_classes = int(declared)
    else:
        num_classes = int(max(ys["train"].max(), ys["test"].max())) + 1
    for split in ("train", "test"):
        if ys[split].size and ys[split].max() >= num_classes:
            raise DataError(
                f"{source}: y_{split} has label {int(ys[split].max())}, out of range for {num_classes} classes"
            )
    return Dataset("python", xs["train"], ys["train"], xs["test"], ys["test"], num_classes)


_LOADERS: dict[str, Callable[[DataConfig], Dataset]] = {
    "python": load_python_dataset,
    "digits": load_digits_dataset,
    "synthetic": load_synthetic_dataset,
    "npz": load_npz_dataset,
    "mnist": load_named_dataset,
    "fashion_mnist": load_named_dataset,
    "cifar10": load_named_dataset,
}


def load_dataset(cfg: DataConfig) -> Dataset:
    """The dataset ``cfg`` names, validated and normalised (see the module docstring)."""
    try:
        loader = _LOADERS[cfg.name]
    except KeyError:
        raise DataError(f"unknown dataset {cfg.name!r}; known: {', '.join(_LOADERS)}") from None
    return loader(cfg)


def plan_steps(n_train: int, batch_size: int, epochs: int | None, steps: int | None) -> int:
    """Optimizer steps in the batch plan (``batch_plan``): the lr schedule's horizon."""
    return steps if steps is not None else (n_train // batch_size) * int(epochs or 0)


def batch_plan(
    n_train: int, batch_size: int, seed: int, epochs: int | None, steps: int | None
) -> list[tuple[int, np.ndarray]]:
    """(epoch, row indices) for every optimizer step: one NumPy permutation per epoch from the
    seed, full batches only (the last partial batch of an epoch is dropped, so every step has
    the same shape). ``steps`` (if given) wins over ``epochs`` and runs as many epochs as
    needed."""
    per_epoch = n_train // batch_size
    if per_epoch == 0:
        raise DataError(f"batch_size {batch_size} is larger than the training set ({n_train})")
    total = plan_steps(n_train, batch_size, epochs, steps)
    rng = np.random.default_rng([seed, 0xBA7C])
    plan: list[tuple[int, np.ndarray]] = []
    epoch = 0
    while len(plan) < total:
        order = rng.permutation(n_train).astype(np.int64)
        for b in range(per_epoch):
            if len(plan) == total:
                break
            plan.append((epoch, order[b * batch_size : (b + 1) * batch_size]))
        epoch += 1
    return plan
