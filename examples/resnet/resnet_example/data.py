"""scikit-learn's bundled handwritten digits (no download): 8x8 grayscale images, channels-first
(N, 1, 8, 8), standardised with training-set statistics; a fixed 80/20 split."""

from __future__ import annotations

import numpy as np


def load() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.images.astype(np.float32)[:, None]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(12345).permutation(len(x))
    n_test = len(x) // 5
    test, train = order[:n_test], order[n_test:]
    mean, std = x[train].mean(), x[train].std()
    x = (x - mean) / std
    return {"x_train": x[train], "y_train": y[train], "x_test": x[test], "y_test": y[test], "num_classes": 10}
