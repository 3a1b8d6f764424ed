#!/usr/bin/env python
"""Is the harness invisible? The suite's training loop against a minimal hand-written loop.

For each model (mlp, cnn, transformer from configs/default.yaml, digits data) and policy (fp32,
bf16-mixed; fp16-mixed too on CUDA), in one process per framework:

* suite: the backend (torch-amp / tf-keras) set up once by the suite's own code, then
  ``precision_suite.measure.loop.train_timed`` (the exact timed-window loop a run uses: batch plan, window syncs,
  telemetry drains, divergence checks) over N steps;
* hand: the same model built from the same initial weights, the same data on the device once,
  the same batches and optimizer settings, trained by the classic minimal loop: for PyTorch
  autocast + GradScaler and ``torch.optim.Adam``; for Keras a plain ``tf.function`` step with
  ``keras.optimizers.Adam`` (and separately ``model.fit``).

Rounds are the suite's paired rotation (``precision_suite.measure.timing.rotation``: hand, suite, hand,
after a warm-up of both); each round's ratio is suite time per step / the mean of the hand
windows around it, wall clock, closed by a device sync; the 95% CI is
``precision_suite.measure.timing.median_ci``'s. The suite side runs with
``train.eval_every_epochs: 0`` (the hand loop does not evaluate; the final evaluation is timed
and subtracted). Printed per case:

    mlp bf16-mixed torch: ratio 1.012 (min 0.991, max 1.030)  suite 0.61 ms/step, hand ...

ratio = median over rounds. Targets: ≤ 1.05 on CPU, ≤ 1.03 on GPU (``--check`` exits 1 when a
case misses). A busy machine makes every ratio noisy: the load average is printed with the
hardware line; rerun on a quiet machine before trusting a miss.

    python benchmarks/harness_overhead.py                 # everything installed, < 5 min on 2 cores
    python benchmarks/harness_overhead.py --quick         # fewer, shorter rounds
    python benchmarks/harness_overhead.py --frameworks torch --models mlp --policies fp32
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

FRAMEWORKS = {"torch": "torch-amp", "tensorflow": "tf-keras"}
MODELS = ("mlp", "cnn", "transformer")
CPU_TARGET, GPU_TARGET = 1.05, 1.03


@dataclasses.dataclass
class Case:
    model: str
    policy: str
    framework: str
    variant: str  # "" for the hand loop, "model.fit" for Keras' fit
    ratios: list[float]
    suite_ms: float
    hand_ms: float
    steps: int
    device: str

    @property
    def label(self) -> str:
        extra = f" ({self.variant})" if self.variant else ""
        return f"{self.model} {self.policy} {self.framework}{extra}"

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    def line(self) -> str:
        from precision_suite.measure.timing import median_ci

        _, low, high, _ = median_ci(self.ratios)
        return (
            f"{self.label}: ratio {self.ratio:.3f} (95% CI {low:.3f}–{high:.3f}, min {min(self.ratios):.3f}, "
            f"max {max(self.ratios):.3f})  suite {self.suite_ms:.3f} ms/step, hand "
            f"{self.hand_ms:.3f} ms/step, {len(self.ratios)} rounds x {self.steps} steps"
        )


# ---------------------------------------------------------------- shared
def suite_config(threads: int | None, *overrides: str) -> Any:
    """configs/default.yaml (the default run) with ``overrides``, and ``runner.threads``."""
    from precision_suite.config import load_config

    return load_config(None, [*overrides, *([f"runner.threads={threads}"] if threads else [])])


def make_job(backend: str, model_name: str, policy: str, args: argparse.Namespace) -> Any:
    """The job a default run would give this backend/model/policy (seed 0), device resolved."""
    from precision_suite.backends import get_backend_class
    from precision_suite.plan import expand_jobs

    config = suite_config(
        args.threads,
        f"backends.names=[{backend}]",
        f"backends.policies={{{backend}: [{policy}]}}",
        "seeds=[0]",
    )
    [job] = [j for j in expand_jobs(config, args.device) if j.model.name == model_name]
    job.device = get_backend_class(backend).resolve_device(args.device)
    return job


def round_job(job: Any, steps: int) -> Any:
    """The same job trained for ``steps`` steps with no warm-up (the harness warmed it)."""
    # No per-epoch evaluation: the hand loop has none, and an evaluation between steps slows
    # the next steps (caches refilled), which is the cost of evaluating, not of the harness.
    train = job.train.model_copy(
        update={"steps": steps, "epochs": None, "timing_warmup_steps": 0, "eval_every_epochs": 0}
    )
    return dataclasses.replace(job, train=train)


def plan_rows(job: Any, n_train: int, steps: int):
    import numpy as np
    from precision_suite.data import batch_plan

    plan = batch_plan(n_train, job.train.batch_size, job.seed, None, steps)
    return np.stack([rows for _, rows in plan])


class SuiteSide:
    """The suite's loop driving an already set-up backend; evaluation time subtracted."""

    def __init__(self, backend: Any, job: Any, data: Any) -> None:
        self.backend, self.job, self.data = backend, job, data
        self.eval_s = 0.0
        evaluate = backend.evaluate

        def timed_evaluate():
            t0 = time.perf_counter()
            try:
                return evaluate()
            finally:
                self.eval_s += time.perf_counter() - t0

        # An instance attribute: only the loop's epoch-end calls go through it, not train_step.
        backend.evaluate = timed_evaluate

    def run(self, steps: int) -> float:
        from precision_suite.measure.loop import new_record, train_timed

        job = round_job(self.job, steps)
        record = new_record(job)
        self.eval_s = 0.0
        t0 = time.perf_counter()
        train_timed(self.backend, job, self.data, record, None)
        self.backend.synchronize()
        elapsed = time.perf_counter() - t0 - self.eval_s
        if record["metrics"].get("timed_steps") != steps:
            raise RuntimeError(f"suite loop timed {record['metrics'].get('timed_steps')} of {steps} steps")
        return elapsed


def timed_side(side: Callable[[int], float], steps: int) -> Callable[[], Any]:
    """A window of ``side`` for ``precision_suite.measure.timing.rotation``; the side times itself
    (the suite side subtracts its evaluation time)."""
    from precision_suite.measure.timing import WindowSample

    def window() -> WindowSample:
        cpu0 = time.process_time()
        wall_s = side(steps)
        return WindowSample(steps, wall_s, time.process_time() - cpu0, os.getloadavg()[0], None)

    return window


def measure(
    suite: Callable[[int], float], hand: Callable[[int], float], args: argparse.Namespace
) -> tuple[list[float], float, float, int]:
    """Warm both sides, size a window to ``args.round_s`` seconds, then ``args.rounds`` rounds
    of the suite's paired rotation (``precision_suite.measure.timing.rotation``: hand, suite, hand; the
    order alternates). Returns per-round ratios suite/hand, median ms/step of each side, steps."""
    from precision_suite.measure.timing import rotation

    suite(10)
    hand(10)
    # The median of three probes: one preempted probe on a busy machine would size every round.
    probe = max(statistics.median(hand(20) / 20 for _ in range(3)), 1e-6)
    steps = int(min(max(args.round_s / probe, 50), args.max_steps))
    rot = rotation(timed_side(hand, steps), [timed_side(suite, steps)], args.rounds)
    ratios = [1 / speedup for speedup in rot.speedups[0]]
    suite_ms = statistics.median(w.step_s for w in rot.candidates[0]) * 1e3
    hand_ms = statistics.median(w.step_s for ws in rot.baseline for w in ws) * 1e3
    return ratios, suite_ms, hand_ms, steps


# ---------------------------------------------------------------- torch
def torch_cases(models: list[str], policies: list[str], args: argparse.Namespace) -> list[Case]:
    cases = []
    for model_name in models:
        for policy in policies:
            cases.append(torch_case(model_name, policy, args))
            print(cases[-1].line(), flush=True)
    return cases


def torch_case(model_name: str, policy: str, args: argparse.Namespace) -> Case:
    import torch
    import torch.nn.functional as F
    from precision_suite.backends import get_backend_class
    from precision_suite.backends.policy import get_policy
    from precision_suite.backends.torch.base import torch_dtype
    from precision_suite.backends.torch.models import build_torch_model
    from precision_suite.measure.loop import cached_dataset
    from precision_suite.models import init_weights, prepare_inputs

    job = make_job("torch-amp", model_name, policy, args)
    device = torch.device(job.device)
    data = cached_dataset(job)
    weights = init_weights(job.model, data.input_shape, data.num_classes, job.seed)
    backend = get_backend_class("torch-amp")()
    backend.setup(job, weights, data)  # also sets TF32/threads/cudnn flags, for both sides
    try:
        suite = SuiteSide(backend, job, data)
        model = build_torch_model(job.model, data.input_shape, data.num_classes, weights).to(device)
        model.train()
        cfg = job.train.optimizer
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
        amp_dtype = torch_dtype(get_policy(policy).compute_dtype)
        use_amp = amp_dtype != torch.float32
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        x_train = torch.from_numpy(prepare_inputs(job.model, data.x_train)).to(device)
        y_train = torch.from_numpy(data.y_train).to(device)

        def hand(steps: int) -> float:
            backend.synchronize()
            # The hand loop makes its own batch order and puts it on the device, as the suite's
            # loop does inside its timing: both sides do the same work.
            t0 = time.perf_counter()
            rows = torch.from_numpy(plan_rows(job, len(data.y_train), steps)).to(device).unbind(0)
            for idx in rows:
                with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                    loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            backend.synchronize()
            return time.perf_counter() - t0

        ratios, suite_ms, hand_ms, steps = measure(suite.run, hand, args)
        return Case(model_name, policy, "torch", "", ratios, suite_ms, hand_ms, steps, job.device)
    finally:
        backend.teardown()


def torch_environment() -> str:
    import torch
    from precision_suite.measure.environment import cpu_info

    if torch.cuda.is_available():
        device = f"GPU {torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"
    else:
        device = f"CPU {cpu_info()['cpu_model']}"
    return f"{device}; torch {torch.__version__}, {torch.get_num_threads()} threads"


# ---------------------------------------------------------------- tensorflow / keras
def tensorflow_cases(models: list[str], policies: list[str], args: argparse.Namespace) -> list[Case]:
    cases = []
    for model_name in models:
        for policy in policies:
            for case in tensorflow_case(model_name, policy, args):
                print(case.line(), flush=True)
                cases.append(case)
    return cases


def tensorflow_case(model_name: str, policy: str, args: argparse.Namespace) -> list[Case]:
    """The hand ``tf.function`` loop case, and the ``model.fit`` case unless ``--no-fit``."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import numpy as np
    import tensorflow as tf
    from precision_suite.backends import get_backend_class
    from precision_suite.backends.keras.common import keras_dtype_policy
    from precision_suite.backends.keras.models import build_keras_model, to_keras_inputs
    from precision_suite.backends.policy import get_policy
    from precision_suite.measure.loop import cached_dataset
    from precision_suite.models import init_weights

    job = make_job("tf-keras", model_name, policy, args)
    data = cached_dataset(job)
    weights = init_weights(job.model, data.input_shape, data.num_classes, job.seed)
    backend = get_backend_class("tf-keras")()
    backend.setup(job, weights, data)  # also sets TF32/determinism, for both sides
    place = "/GPU:0" if job.device == "cuda" else "/CPU:0"
    cases = []
    try:
        suite = SuiteSide(backend, job, data)
        dtype_policy = keras.DTypePolicy(keras_dtype_policy(policy))
        cfg = job.train.optimizer
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

        def adam() -> Any:
            opt = keras.optimizers.Adam(learning_rate=cfg.lr, beta_1=cfg.betas[0], beta_2=cfg.betas[1], epsilon=cfg.eps)
            if get_policy(policy).loss_scaling:
                opt = keras.optimizers.LossScaleOptimizer(opt)
            return opt

        def new_model() -> Any:
            with tf.device(place):
                return build_keras_model(job.model, data.input_shape, data.num_classes, weights, dtype_policy)

        with tf.device(place):
            x_train = tf.constant(to_keras_inputs(job.model, data.x_train))
            y_train = tf.constant(data.y_train.astype(np.int32))
        model = new_model()
        optimizer = adam()
        optimizer.build(model.trainable_variables)

        @tf.function(jit_compile=False)
        def step(idx):
            x, y = tf.gather(x_train, idx), tf.gather(y_train, idx)
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(x, training=True))
                scaled = optimizer.scale_loss(loss)
            grads = tape.gradient(scaled, model.trainable_variables)
            optimizer.apply(grads, model.trainable_variables)
            return loss

        def hand(steps: int) -> float:
            with tf.device(place):
                backend.synchronize()
                t0 = time.perf_counter()  # batch order included, as for the suite (see torch)
                rows = tf.unstack(tf.constant(plan_rows(job, len(data.y_train), steps).astype(np.int32)))
                for idx in rows:
                    loss = step(idx)
                loss.numpy()  # reading the last step's output waits for all of them
                return time.perf_counter() - t0

        ratios, suite_ms, hand_ms, steps = measure(suite.run, hand, args)
        cases.append(Case(model_name, policy, "tensorflow", "", ratios, suite_ms, hand_ms, steps, job.device))
        if not args.fit:
            return cases

        fit_model = new_model()
        fit_model.compile(optimizer=adam(), loss=loss_fn, jit_compile=False)

        def fit(steps: int) -> float:
            rows = plan_rows(job, len(data.y_train), steps)
            # Batches gathered on the device beforehand: fit's own pipeline, no host work.
            with tf.device(place):
                batches = tf.data.Dataset.from_tensor_slices((tf.gather(x_train, rows), tf.gather(y_train, rows)))
            t0 = time.perf_counter()
            fit_model.fit(batches, epochs=1, verbose=0, shuffle=False)
            return time.perf_counter() - t0

        ratios, suite_ms, fit_ms, steps = measure(suite.run, fit, args)
        cases.append(Case(model_name, policy, "tensorflow", "model.fit", ratios, suite_ms, fit_ms, steps, job.device))
        return cases
    finally:
        backend.teardown()
        keras.backend.clear_session()


def tensorflow_environment() -> str:
    import keras
    import tensorflow as tf
    from precision_suite.measure.environment import cpu_info

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
        device = f"GPU {name}"
    else:
        device = f"CPU {cpu_info()['cpu_model']}"
    # 0 from the API means TF's default: TF_NUM_INTRAOP_THREADS (the runner sets it) or all cores.
    threads = tf.config.threading.get_intra_op_parallelism_threads()
    threads = threads or os.environ.get("TF_NUM_INTRAOP_THREADS") or os.cpu_count()
    return f"{device}; tensorflow {tf.__version__}, keras {keras.__version__}, {threads} intra-op threads"


# ---------------------------------------------------------------- driver
def unavailable_reason(framework: str) -> str | None:
    from precision_suite.backends import RegistryError, get_backend_class

    try:
        cls = get_backend_class(FRAMEWORKS[framework])
    except RegistryError as exc:
        return str(exc)
    available = cls.is_available()
    return None if available.ok else available.reason


def run_framework(framework: str, args: argparse.Namespace) -> int:
    """In this process: one framework's cases; prints lines, appends JSON to ``--json``."""
    cuda = False
    if framework == "torch":
        import torch

        cuda = torch.cuda.is_available() and args.device != "cpu"
        print(f"# {torch_environment()}; load average {os.getloadavg()[0]:.2f}", flush=True)
    else:
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
        import tensorflow as tf

        cuda = bool(tf.config.list_physical_devices("GPU")) and args.device != "cpu"
        print(f"# {tensorflow_environment()}; load average {os.getloadavg()[0]:.2f}", flush=True)
    load = os.getloadavg()[0]
    if load > 0.5 * (os.cpu_count() or 1) and not cuda:
        print(
            f"# warning: load average {load:.1f} on {os.cpu_count()} cores: other processes share "
            "the CPU and every ratio is noisy (multi-threaded torch most: its worker threads wait "
            "on preempted ones); rerun on a quiet machine, or compare with --threads 1",
            flush=True,
        )
    policies = list(args.policies or (["fp32", "bf16-mixed"] + (["fp16-mixed"] if cuda else [])))
    run = torch_cases if framework == "torch" else tensorflow_cases
    cases = run(list(args.models), policies, args)
    target = GPU_TARGET if cuda else CPU_TARGET
    if args.json:
        with open(args.json, "a") as f:
            for case in cases:
                row = dataclasses.asdict(case) | {"ratio": case.ratio, "target": target}
                f.write(json.dumps(row) + "\n")
    missed = [c for c in cases if c.ratio > target]
    print(
        f"# {framework}: {len(cases) - len(missed)}/{len(cases)} cases within the "
        f"{'GPU' if cuda else 'CPU'} target ratio <= {target}; load average now "
        f"{os.getloadavg()[0]:.2f}",
        flush=True,
    )
    return 1 if (missed and args.check) else 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frameworks", default="torch,tensorflow", help="comma-separated: torch,tensorflow")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: mlp,cnn,transformer")
    parser.add_argument("--policies", default=None, help="comma-separated (default: fp32,bf16-mixed[,fp16-mixed])")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=None, help="runner.threads for both sides (default: all cores)")
    parser.add_argument("--rounds", type=int, default=9, help="A/B rounds per case (default 9)")
    parser.add_argument("--round-s", type=float, default=0.3, help="seconds per side per round (0.3)")
    parser.add_argument("--max-steps", type=int, default=2000, help="cap on steps per round")
    parser.add_argument("--no-fit", dest="fit", action="store_false", help="skip the Keras model.fit case")
    parser.add_argument("--quick", action="store_true", help="3 rounds of ~0.25 s: a smoke run")
    parser.add_argument("--check", action="store_true", help="exit 1 when a case misses its target")
    parser.add_argument("--json", help="append one JSON object per case to this file")
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.quick:
        args.rounds, args.round_s = min(args.rounds, 3), min(args.round_s, 0.25)
    frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    for name in frameworks:
        if name not in FRAMEWORKS:
            print(f"--frameworks: unknown {name!r}; known: {', '.join(FRAMEWORKS)}", file=sys.stderr)
            return 2
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    for name in args.models:
        if name not in MODELS:
            print(f"--models: unknown {name!r}; known: {', '.join(MODELS)}", file=sys.stderr)
            return 2
    if args.policies:
        args.policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    if args.in_process:
        return run_framework(frameworks[0], args)

    from precision_suite.execution.local import worker_environment

    # One process per framework, with the runner's thread settings (frameworks never share a
    # process in a suite run either).
    env = worker_environment(suite_config(args.threads))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    code = 0
    started = time.perf_counter()
    for framework in frameworks:
        reason = importlib.util.find_spec(framework) is None and f"{framework} is not installed"
        reason = reason or unavailable_reason(framework)
        if reason:
            print(f"# {framework}: skipped ({reason})", flush=True)
            continue
        code = max(code, subprocess.call(_child_command(framework, args), env=env, cwd=ROOT))
    print(f"# total {time.perf_counter() - started:.0f} s", flush=True)
    return code


def _child_command(framework: str, args: argparse.Namespace) -> list[str]:
    command = [sys.executable, str(Path(__file__).resolve()), "--in-process", "--frameworks", framework]
    command += ["--models", ",".join(args.models), "--device", args.device, "--rounds", str(args.rounds)]
    command += ["--round-s", str(args.round_s), "--max-steps", str(args.max_steps)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    if args.policies:
        command += ["--policies", ",".join(args.policies)]
    if args.json:
        command += ["--json", str(Path(args.json).resolve())]
    command += [flag for flag, on in (("--no-fit", not args.fit), ("--check", args.check)) if on]
    return command


if __name__ == "__main__":
    sys.exit(main())
