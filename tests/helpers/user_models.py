"""A user's model package, written where a test wants it (next to its config, as a user would
arrange it): a torch MLP with BatchNorm and LayerNorm, its Keras twin, a converter, and data
loaders — one per label shape. ``variant`` plants one fault for the error tests."""

from __future__ import annotations

from pathlib import Path

MODELS = """
import numpy as np

VARIANT = {variant!r}
HIDDEN = 16


def build_torch(input_shape, num_classes):
    from torch import nn

    if VARIANT == "torch_raises":
        raise RuntimeError("the factory broke on purpose")
    if VARIANT == "torch_wrong_type":
        return "not a module"
    n = int(np.prod(input_shape))
    out = num_classes + 1 if VARIANT == "wrong_classes" else num_classes
    return nn.Sequential(
        nn.Flatten(), nn.Linear(n, HIDDEN), nn.BatchNorm1d(HIDDEN), nn.ReLU(),
        nn.LayerNorm(HIDDEN), nn.Linear(HIDDEN, out),
    )


def build_keras(input_shape, num_classes):
    import keras

    inputs = keras.Input(input_shape)
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(HIDDEN)(x)
    x = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.LayerNormalization(epsilon=1e-5)(x)
    logits = keras.layers.Dense(num_classes, dtype="float32")(x)
    return keras.Model(inputs, logits)


def torch_to_keras(state, model):
    dense = [layer for layer in model.layers if layer.__class__.__name__ == "Dense"]
    bn = next(layer for layer in model.layers if layer.__class__.__name__ == "BatchNormalization")
    ln = next(layer for layer in model.layers if layer.__class__.__name__ == "LayerNormalization")
    dense[0].set_weights([state["1.weight"].T, state["1.bias"]])
    bn.set_weights([state["2.weight"], state["2.bias"], state["2.running_mean"], state["2.running_var"]])
    ln.set_weights([state["4.weight"], state["4.bias"]])
    if VARIANT != "convert_misses_head":
        dense[1].set_weights([state["5.weight"].T, state["5.bias"]])


# Per position: a token tagger (N, T) -> (N, T, K), the shape a language model's labels have.
def build_torch_tagger(input_shape, num_classes):
    from torch import nn

    return nn.Sequential(nn.Embedding(8, HIDDEN), nn.LayerNorm(HIDDEN), nn.Linear(HIDDEN, num_classes))


def build_keras_tagger(input_shape, num_classes):
    import keras

    inputs = keras.Input(input_shape, dtype="int32")
    x = keras.layers.Embedding(8, HIDDEN)(inputs)
    x = keras.layers.LayerNormalization(epsilon=1e-5)(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, dtype="float32")(x))


def tagger_to_keras(state, model):
    emb, ln, dense = model.layers[1:4]
    emb.set_weights([state["0.weight"]])
    ln.set_weights([state["1.weight"], state["1.bias"]])
    dense.set_weights([state["2.weight"].T, state["2.bias"]])
"""

DATA = '''
import numpy as np


def load():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None]
    y = digits.target.astype(np.int64)
    return {"x_train": x[:1200], "y_train": y[:1200], "x_test": x[1200:1500], "y_test": y[1200:1500]}


def load_tokens():
    """Tag each token with (token + previous token) mod 5: learnable, one label per position."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 8, size=(600, 6))
    y = (x + np.roll(x, 1, axis=1)) % 5
    return {"x_train": x[:500], "y_train": y[:500], "x_test": x[500:], "y_test": y[500:], "num_classes": 5}


def load_not_a_dict():
    return [1, 2, 3]
'''


def write_package(root: Path, name: str = "userpkg", variant: str = "") -> Path:
    """``root/name/`` with ``models.py`` and ``data.py``; returns the package folder."""
    package = root / name
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(MODELS.format(variant=variant))
    (package / "data.py").write_text(DATA)
    return package


# The rows the acceptance names.
ACCEPTANCE_BACKENDS = {
    "torch-amp": ["fp32", "bf16-mixed", "fp16-mixed"],
    "torch-manual": ["bf16-mixed"],
    "tf-keras": ["fp32", "bf16-mixed"],
}


def config_text(
    name: str = "userpkg",
    torch: str = "build_torch",
    keras: str | None = "build_keras",
    convert: str | None = "torch_to_keras",
    loader: str = "load",
    backends: dict[str, list[str]] | None = None,
    steps: int = 8,
    seeds: str = "[0, 1]",
    extra: str = "",
) -> str:
    """A config for the package, next to it: every backend the issue's acceptance names."""
    model = [f"    torch: {name}.models:{torch}"]
    if keras:
        model.append(f"    keras: {name}.models:{keras}")
    if convert:
        model.append(f"    convert: {name}.models:{convert}")
    model_lines = "\n".join(model)
    backends = ACCEPTANCE_BACKENDS if backends is None else backends
    policies = "{" + ", ".join(f"{b}: [{', '.join(p)}]" for b, p in backends.items()) + "}"
    return f"""models:
  - kind: custom
    name: mine
{model_lines}
data:
  name: python
  loader: {name}.data:{loader}
train:
  steps: {steps}
  batch_size: 32
  timing_warmup_steps: 1
  timing_window_steps: 4
  optimizer: {{name: sgd, lr: 0.05}}
backends:
  names: [{", ".join(backends)}]
  policies: {policies}
seeds: {seeds}
device: cpu
speed:
  enabled: false
{extra}"""
