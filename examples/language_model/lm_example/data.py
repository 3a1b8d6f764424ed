"""Text generated offline from a small grammar (no download), as characters: every row is a window
of ``CONTEXT`` characters and its labels the next character at each position (N, T) — a
language model's next-token targets."""

from __future__ import annotations

import numpy as np

CONTEXT = 32
ADJECTIVES = ["small", "quiet", "red", "old", "bright", "lazy"]
NOUNS = ["fox", "river", "robot", "garden", "teacher", "cloud"]
VERBS = ["sees", "follows", "paints", "helps", "finds", "moves"]
ALPHABET = sorted(set(" .".join(ADJECTIVES + NOUNS + VERBS) + "the ."))


def sentences(rng: np.random.Generator, count: int) -> str:
    words = []
    for _ in range(count):
        words.append(f"the {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {rng.choice(VERBS)} the {rng.choice(NOUNS)} .")
    return " ".join(words)


def windows(text: str, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    ids = np.array([ALPHABET.index(c) for c in text], np.int64)
    starts = rng.integers(0, len(ids) - CONTEXT - 1, size=count)
    x = np.stack([ids[s : s + CONTEXT] for s in starts])
    y = np.stack([ids[s + 1 : s + CONTEXT + 1] for s in starts])
    return x, y


def load() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2026)
    x_train, y_train = windows(sentences(rng, 600), 2048, rng)
    x_test, y_test = windows(sentences(rng, 150), 512, rng)  # text the model never trained on
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test, "num_classes": len(ALPHABET)}
