"""A user's Keras model (``kind: custom``, ``keras: package.module:function``), on any Keras runtime.

The factory ``(input_shape, num_classes) -> keras.Model`` is called with the job's dtype policy as
Keras' global policy (so layers built without an explicit ``dtype`` follow the policy, as in
Keras' mixed-precision guide), then restored. Initial weights are ``model.weights`` in order,
named ``"<index> <path>"`` (paths differ between two builds in one process: Keras numbers its
layer names; the order does not): built once per seed under ``keras.utils.set_random_seed``, or,
with ``convert``, the torch factory's initial state put into the Keras model by the user's
converter, checked that it set every weight. keras is imported inside the functions: the module
that calls them picks the runtime first (``common.import_keras``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from precision_suite.config import CustomModelConfig
from precision_suite.errors import first_line
from precision_suite.models import UserCodeError, resolve_import

# What a weight holds before the converter runs: a weight still NaN after it was never set.
UNSET = np.nan


def call_keras_factory(
    keras: Any, model: CustomModelConfig, input_shape: tuple[int, ...], num_classes: int, dtype_policy: Any
) -> Any:
    """The (built) model the factory returns, built under ``dtype_policy``."""
    factory = resolve_import(str(model.keras), f"models ({model.name}): keras")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(dtype_policy)
    try:
        built = factory(tuple(input_shape), int(num_classes))
    finally:
        keras.config.set_dtype_policy(previous)
    if not isinstance(built, keras.Model):
        raise UserCodeError(
            f"models ({model.name}): keras factory {model.keras!r} returned {type(built).__module__}."
            f"{type(built).__name__}; expected a keras.Model"
        )
    if not built.built:
        built.build((None, *input_shape))
    return built


def weight_names(model: Any) -> list[str]:
    return [f"{i:03d} {v.path}" for i, v in enumerate(model.weights)]


def keras_weights(model: Any) -> dict[str, np.ndarray]:
    from keras import ops

    return {
        name: np.asarray(ops.convert_to_numpy(v.value)).copy()
        for name, v in zip(weight_names(model), model.weights, strict=True)
    }


def load_keras_weights(model: Any, weights: dict[str, np.ndarray], what: str) -> None:
    """Assign ``weights`` (``keras_weights`` of a model from the same factory) by position."""
    values = list(weights.values())
    if len(values) != len(model.weights):
        raise ValueError(
            f"weights do not fit {what}: it has {len(model.weights)} weights, the initial state {len(values)}"
        )
    for name, var, value in zip(weights, model.weights, values, strict=True):
        if tuple(value.shape) != tuple(var.shape):
            raise ValueError(
                f"weight {name!r}: shape {value.shape} does not fit {what}'s {var.path} {tuple(var.shape)}"
            )
        var.assign(np.asarray(value).astype(var.dtype))


def convert_torch_state(model: CustomModelConfig, state: dict[str, np.ndarray], target: Any) -> None:
    """Run the user's converter on ``target`` (every weight set to NaN first) and check that it set
    every weight, and with finite values: ``UserCodeError`` naming the first one it did not."""
    converter = resolve_import(str(model.convert), f"models ({model.name}): convert")
    for var in target.weights:
        if np.dtype(var.dtype).kind == "f":
            var.assign(np.full(tuple(var.shape), UNSET, dtype=np.dtype(var.dtype)))
    try:
        converter({name: value.copy() for name, value in state.items()}, target)
    except Exception as exc:
        raise UserCodeError(
            f"models ({model.name}): convert {model.convert!r} raised {type(exc).__name__}: {first_line(exc)}"
        ) from None
    for name, value in keras_weights(target).items():
        if value.dtype.kind == "f" and np.isnan(value).any():
            unset = "never set" if np.isnan(value).all() else "left partly unset (NaN)"
            raise UserCodeError(
                f"models ({model.name}): convert {model.convert!r} left Keras weight {name.split(' ', 1)[1]!r} "
                f"(#{int(name.split(' ', 1)[0])}, shape {value.shape}) {unset}"
            )


def keras_initial_weights(
    model: CustomModelConfig, input_shape: tuple[int, ...], num_classes: int, seed: int, runtime: str
) -> dict[str, np.ndarray]:
    """The Keras model's initial weights for ``seed`` (module docstring)."""
    from precision_suite.backends.keras.common import import_keras, set_random_seed

    keras = import_keras(runtime)
    if model.convert is not None:
        from precision_suite.backends.torch.custom import torch_initial_state

        state = torch_initial_state(model, input_shape, num_classes, seed)
        target = call_keras_factory(keras, model, input_shape, num_classes, "float32")
        convert_torch_state(model, state, target)
        return keras_weights(target)
    set_random_seed(keras, seed)
    return keras_weights(call_keras_factory(keras, model, input_shape, num_classes, "float32"))


def first_weighted_layer(model: Any) -> Any:
    """The first layer (nested ones included) holding a kernel or an embedding table."""
    for layer in model._flatten_layers(include_self=False):
        if getattr(layer, "kernel", None) is not None or getattr(layer, "embeddings", None) is not None:
            return layer
    return None


def custom_observed_precision(
    keras: Any, model: Any, rows: Any, job: Any, loss_scale: dict[str, Any]
) -> dict[str, Any]:
    """Observed precision of a custom model: the dtype of its first weighted layer's output on
    ``rows`` (a probe model up to that layer: functional models), else that layer's declared
    compute dtype (a subclassed model), labelled which."""
    layer = first_weighted_layer(model)
    variable = getattr(layer, "kernel", None) if layer is not None else None
    if variable is None and layer is not None:
        variable = layer.embeddings
    if variable is None:
        variable = max(model.trainable_variables, key=lambda v: int(np.prod(v.shape)))
    compute, source = None, "no weighted layer"
    if layer is not None:
        try:
            probe = keras.Model(model.inputs, layer.output)
            compute = keras.backend.standardize_dtype(probe(rows, training=False).dtype)
            source = f"output of layer {layer.name}"
        except Exception:  # a subclassed model has no symbolic graph to probe
            compute, source = layer.compute_dtype, f"declared compute dtype of layer {layer.name}"
    return {
        "compute_dtype": compute,
        "compute_dtype_source": source,
        "param_dtype": str(variable.dtype),
        "master_dtype": str(variable.dtype),
        "loss_scaling": job.loss_scaling_mode,
        "layer_compute_dtype": layer.compute_dtype if layer is not None else None,
        "layer_variable_dtype": layer.variable_dtype if layer is not None else None,
        "loss_scale_config": loss_scale,
    }


def keras_forward(model: Any, x: np.ndarray) -> np.ndarray:
    from keras import ops

    return np.asarray(ops.convert_to_numpy(model(x, training=False)), np.float32)


def check_keras_model(
    model: CustomModelConfig,
    x: np.ndarray,
    expected: tuple[int, ...],
    num_classes: int,
    runtime: str,
    torch_output: np.ndarray | None,
) -> Exception | None:
    """Before any job: the factory's model and one forward pass on ``x`` (output shape
    ``expected``); with ``convert``, the converter on the torch initial state (every weight set)
    and the converted model's output against ``torch_output`` (the torch model's on the same
    rows, same weights). Returns the exception the factory itself raised (a job then records it)."""
    from precision_suite.backends.keras.common import import_keras

    keras = import_keras(runtime)
    input_shape, what = tuple(x.shape[1:]), f"models ({model.name}): the Keras model"
    try:
        built = call_keras_factory(keras, model, input_shape, num_classes, "float32")
    except UserCodeError:
        raise
    except Exception as exc:
        return exc
    if model.convert is not None and torch_output is not None:  # None: the torch factory raised (a warning)
        from precision_suite.backends.torch.custom import torch_initial_state

        convert_torch_state(model, torch_initial_state(model, input_shape, num_classes, 0), built)
    try:
        out = keras_forward(built, x)
    except Exception as exc:
        raise UserCodeError(
            f"{what}'s forward pass on one batch of x_train (shape {x.shape}) raised {type(exc).__name__}: "
            f"{first_line(exc)}"
        ) from None
    if tuple(out.shape) != tuple(expected):
        raise UserCodeError(
            f"{what}'s output on one batch of x_train (shape {x.shape}) has shape {tuple(out.shape)}; expected "
            f"{tuple(expected)} (num_classes={num_classes})"
        )
    if model.convert is not None and torch_output is not None:
        scale = max(1.0, float(np.abs(torch_output).max()))
        gap = float(np.abs(out - torch_output).max())
        if not gap <= CONVERT_ATOL * scale:
            raise UserCodeError(
                f"models ({model.name}): after convert {model.convert!r} the Keras model's fp32 outputs differ from "
                f"the torch model's on the same batch by up to {gap:.3g} (allowed {CONVERT_ATOL * scale:.3g}); "
                "a weight is mismatched (layout: torch Linear is (out, in), Keras Dense (in, out); conv OIHW vs HWIO)"
            )
    return None


# fp32 outputs of the same weights in two frameworks agree to rounding (~1e-6 relative); a wrong
# layout or a missed weight is off by orders of magnitude more.
CONVERT_ATOL = 1e-3
