"""Property test: any mutation of a valid config either validates or is rejected with one
line (exit 2 in the CLI) — never a traceback."""

from __future__ import annotations

import copy
import math
from typing import Any

import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from precision_suite.config import ConfigError, default_config_text, parse_yaml, validate
from precision_suite.plan import check_backends

BASE = yaml.safe_load(default_config_text())

values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["fp16-mixed", "torch-ampp", "mlp", "1e-3", "ten", "-1", "[]", "cuda", "npz"]),
    st.lists(st.one_of(st.integers(-3, 3), st.text(max_size=5)), max_size=3),
    st.dictionaries(st.text(max_size=6), st.integers(-2, 2), max_size=2),
)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, child in node.items():
            out += _paths(child, prefix + (key,))
    elif isinstance(node, list):
        for i, child in enumerate(node):
            out += _paths(child, prefix + (i,))
    return out


PATHS = _paths(BASE)


@st.composite
def mutated_configs(draw) -> dict[str, Any]:
    raw = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        parent = raw
        try:
            for part in path[:-1]:
                parent = parent[part]
            action = draw(st.sampled_from(["replace", "delete", "add-unknown"]))
            if action == "replace":
                parent[path[-1]] = draw(values)
            elif action == "delete" and isinstance(parent, dict):
                parent.pop(path[-1], None)
            elif isinstance(parent, dict):
                parent[draw(st.text(min_size=1, max_size=8))] = draw(values)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or retyped the path
    return raw


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_configs())
def test_every_mutation_validates_or_fails_with_one_line(raw):
    try:
        text = yaml.safe_dump(raw, allow_unicode=True)
    except yaml.YAMLError:
        return
    try:
        config = validate(parse_yaml(text, "mut.yaml"), "mut.yaml")
        check_backends(config, "mut.yaml")
    except ConfigError as exc:
        message = str(exc)
        assert message.startswith("mut.yaml"), message
        assert "\n" not in message, message
        event("rejected")
        return
    event("validated")
    # What validated must be a config that can run: finite, positive where it matters.
    assert config.train.batch_size > 0 and config.seeds
    assert math.isfinite(config.train.optimizer.lr) and config.train.optimizer.lr > 0
