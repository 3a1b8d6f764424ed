"""``keep_fp32`` for any Keras model: named layers run under the ``float32`` dtype policy.

A name means the layer of that name and every layer whose name starts with it and a dot (a
built-in transformer's ``block0`` is its ``block0.attn``, ``block0.ln1``, ...), with all their
sublayers: a float32 sublayer inside a mixed layer would still read its weights through the
outer layer's autocast scope. The policy is set on the built model, before any step is traced;
the next layer (mixed) casts the float32 output back to its compute dtype, as Keras does at
every layer boundary.

Imports keras at module level: only the Keras backends import it, inside their methods.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import keras
import numpy as np
from precision_suite.backends.base import dtype_summary


def _own_layer(layer: Any) -> bool:
    """A layer worth keeping: it holds weights, or it is not one of Keras' own (a user's layer)."""
    return bool(layer.weights) or not type(layer).__module__.startswith("keras.")


def candidate_layers(model: keras.Model) -> list[str]:
    """The layers of a user's model that ``bisect`` ranks, in order: its layers but the inputs
    and Keras' own layers that hold no weights (activations, dropout, pooling, adds)."""
    inputs = keras.layers.InputLayer
    return [layer.name for layer in model.layers if not isinstance(layer, inputs) and _own_layer(layer)]


def matched_layers(model: keras.Model, names: list[str]) -> dict[str, list[Any]]:
    """``names`` → the top-level layers each one names; an unknown name raises one line."""
    found = {}
    for name in names:
        layers = [layer for layer in model.layers if layer.name == name or layer.name.startswith(f"{name}.")]
        if not layers:
            raise ValueError(
                f'keep_fp32: "{name}" is not a layer of the model; its layers: {", ".join(candidate_layers(model))}'
            )
        found[name] = layers
    return found


def keep_layers_fp32(model: keras.Model, names: list[str]) -> dict[str, list[Any]]:
    """Set the float32 dtype policy on every layer ``names`` match and on their sublayers;
    returns the matched top-level layers by name."""
    found = matched_layers(model, names)
    for layers in found.values():
        for layer in layers:
            for sub in layer._flatten_layers(include_self=True, recursive=True):
                sub.dtype_policy = "float32"
    return found


def observe_kept(
    model: keras.Model, kept: dict[str, list[Any]], x: Any, context: AbstractContextManager
) -> tuple[dict[str, dict[str, str]], str | None]:
    """(per kept name: the dtypes its layers' outputs had on rows ``x`` and its variables hold;
    the output dtype of the first layer with a kernel that is not kept, None if there is none),
    from one pass of a model over the same graph that returns those layers' outputs."""
    from keras import backend

    inside = {id(layer) for layers in kept.values() for layer in layers}
    free = next((la for la in model.layers if id(la) not in inside and getattr(la, "kernel", None) is not None), None)
    watched = [la for layers in kept.values() for la in layers] + ([free] if free is not None else [])
    with context:
        outputs = keras.Model(model.inputs, [la.output for la in watched])([x])
    dtype_of = {id(la): backend.standardize_dtype(out.dtype) for la, out in zip(watched, outputs, strict=True)}
    observed = {}
    for name, layers in kept.items():
        computed = {dtype_of[id(la)] for la in layers}
        variables = {str(v.dtype) for la in layers for v in la.weights if "float" in str(v.dtype)}
        observed[name] = {"compute_dtype": dtype_summary(computed), "param_dtype": dtype_summary(variables)}
    return observed, (dtype_of[id(free)] if free is not None else None)


def probe_layers(candidate: Any, reference: Any, names: list[str], steps: list[Any]) -> list[Any]:
    """``Backend.probe_blocks`` for the Keras backends: each named layer of ``candidate.model``
    runs under its own dtype policy (which casts its inputs to the compute dtype, as in training)
    on the inputs the fp32 ``reference`` gave it, against the reference's output. Activations
    only: the gradient error is not measured here (None)."""
    from keras import ops
    from precision_suite.backends.base import BlockError

    watched = [matched_layers(reference.model, [name])[name][0] for name in names]
    inner = keras.Model(reference.model.inputs, [la.input for la in watched] + [la.output for la in watched])
    found = []
    for step, rows in enumerate(steps):
        index = np.asarray(rows).reshape(-1)
        with reference.runtime_context():
            values = inner([ops.take(reference.x_train, index, axis=0)])
        inputs, outputs = values[: len(watched)], values[len(watched) :]
        for name, given, expected in zip(names, inputs, outputs, strict=True):
            with candidate.runtime_context():
                out = candidate.model.get_layer(name)(given)
            mine = np.asarray(ops.convert_to_numpy(ops.cast(out, "float32")), np.float64)
            theirs = np.asarray(ops.convert_to_numpy(expected), np.float64)
            nonfinite = int((~np.isfinite(mine)).sum())
            scale = float(np.linalg.norm(theirs))
            diff = float(np.linalg.norm(mine - theirs))
            act = float("inf") if nonfinite else (diff / scale if scale > 0 else diff)
            found.append(BlockError(name, step, act, None, nonfinite))
        reference.train_step(np.asarray(rows))
        for target, source in zip(candidate.model.weights, reference.model.weights, strict=True):
            target.assign(source.value)  # the candidate probes the weights fp32 training reached
    return found
