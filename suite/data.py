"""Datasets and the batch plan shared by every backend.

Inputs are canonical: images (N, C, H, W), vectors (N, F), float32, normalised once here in
NumPy so every backend sees identical values; labels int64 in [0, num_classes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from suite.config import DataConfig


class DataError(ValueError):
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


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, name: str) -> Dataset:
    # The split is fixed (not per seed) so every seed and backend is scored on the same test set.
    order = np.random.default_rng(12345).permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return Dataset(
        name, x[train], y[train], x[test], y[test], int(y.max()) + 1
    )


def _standardise(ds: Dataset) -> Dataset:
    # One mean/std over the training pixels, applied to both splits.
    mean = float(ds.x_train.mean())
    std = float(ds.x_train.std()) or 1.0
    ds.x_train = ((ds.x_train - mean) / std).astype(np.float32)
    ds.x_test = ((ds.x_test - mean) / std).astype(np.float32)
    return ds


def load_digits_dataset(cfg: DataConfig) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.astype(np.float32)[:, None, :, :]  # (1797, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    return _standardise(_split(x, y, cfg.test_fraction, "digits"))


_LOADERS = {"digits": load_digits_dataset}


def load_dataset(cfg: DataConfig) -> Dataset:
    try:
        loader = _LOADERS[cfg.name]
    except KeyError:
        raise DataError(f"dataset {cfg.name!r} is not implemented yet") from None
    return loader(cfg)


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
    total = steps if steps is not None else per_epoch * int(epochs or 0)
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
