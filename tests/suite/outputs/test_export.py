from __future__ import annotations

import glob
import importlib.util
import os
import socket
import struct

import pytest
from precision_suite.cli import main
from precision_suite.outputs.export import export_run, job_series, lr_curve

from tests.helpers.records import make_record

# The training loop's curves as they appear in a record; values chosen so each scalar is distinct.
WINDOWS = {
    "window_end_step": [6, 10, 14, 18, 20],
    "window_steps": [4, 4, 4, 4, 2],
    "window_step_time_ms": [10.5, 10.25, 9.75, 10.0, 11.0],
}


def _records() -> list[dict]:
    records = [
        make_record("torch-amp", "fp32", 0),
        make_record("torch-amp", "fp16-mixed", 0, skipped=3),
        make_record("torch-amp", "tf32", 0, status="unavailable", error="tf32 needs CUDA"),
    ]
    for record in records[:2]:
        record["curves"].update(WINDOWS, epoch=[s // 10 for s in range(20)], eval_epoch=[0, 1])
        record["config"]["train"].update(
            steps=20,
            optimizer={"name": "sgd", "lr": 0.1},
            lr_schedule={"name": "cosine", "warmup_steps": 2, "min_lr_ratio": 0.0},
        )
    return records


@pytest.fixture
def no_network(monkeypatch):
    """Any connection that leaves this machine fails the test (loopback and Unix sockets are
    how the trackers' own helper processes talk to this one)."""
    real_connect = socket.socket.connect
    attempts: list = []

    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else None
        if host is not None and host not in ("127.0.0.1", "::1", "localhost"):
            attempts.append(address)
            raise OSError(f"test: network access to {address} refused")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    yield attempts
    assert attempts == [], f"export tried the network: {attempts}"


def test_lr_curve_follows_the_reference_schedule_and_skipped_steps_do_not_advance_it():
    from precision_suite.backends.reference.lr_schedule import lr_factor
    from precision_suite.config import LrScheduleConfig

    record = _records()[1]  # 3 skipped steps at the start
    cfg = LrScheduleConfig(name="cosine", warmup_steps=2, min_lr_ratio=0.0)
    lr = lr_curve(record)
    assert lr[:4] == [0.1 * lr_factor(cfg, 0, 20)] * 4  # steps 0-2 skipped: still applied step 0
    assert lr[4] == pytest.approx(0.1 * lr_factor(cfg, 1, 20))
    assert lr[-1] == pytest.approx(0.1 * lr_factor(cfg, 16, 20))
    record["curves"]["lr"] = [0.5] * 20  # a record with its own lr curve wins
    assert lr_curve(record) == [0.5] * 20


def _read_events(path: str) -> list:
    """TFRecord framing (length, masked CRC, payload, masked CRC) around Event protos."""
    from tensorboardX.crc32c import crc32c
    from tensorboardX.proto.event_pb2 import Event

    def masked(data: bytes) -> int:
        crc = crc32c(data)
        return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF

    raw, pos, events = open(path, "rb").read(), 0, []
    while pos < len(raw):
        header = raw[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", raw[pos + 8 : pos + 12])[0] == masked(header)
        payload = raw[pos + 12 : pos + 12 + length]
        assert struct.unpack("<I", raw[pos + 12 + length : pos + 16 + length])[0] == masked(payload)
        event = Event()
        event.ParseFromString(payload)
        events.append(event)
        pos += 16 + length
    return events


@pytest.mark.skipif(importlib.util.find_spec("tensorboardX") is None, reason="tensorboardX not installed")
def test_tensorboard_scalars_read_back_equal_the_records_curves(write_run, no_network, capsys):
    records = _records()
    run = write_run("run", records)
    assert main(["export", str(run), "--to", "tensorboard"]) == 0
    assert "exported 2 run(s) to tensorboard" in capsys.readouterr().out
    folders = sorted(os.listdir(run / "tensorboard"))
    assert folders == ["mlp_digits_torch-amp_fp16-mixed_seed0", "mlp_digits_torch-amp_fp32_seed0"]
    record = records[1]
    (events_file,) = glob.glob(str(run / "tensorboard" / folders[0] / "events.out.tfevents.*"))
    scalars: dict[str, list] = {}
    plugins = set()
    for event in _read_events(events_file):
        for value in event.summary.value:
            if value.metadata.plugin_data.plugin_name:
                plugins.add(value.metadata.plugin_data.plugin_name)
            if value.HasField("simple_value"):
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    curves = record["curves"]
    assert scalars["train/loss"] == [
        (s, pytest.approx(v, rel=1e-6)) for s, v in zip(curves["step"], curves["train_loss"], strict=True)
    ]
    assert scalars["train/loss_scale"] == list(zip(curves["step"], curves["loss_scale"], strict=True))
    assert [v for _, v in scalars["train/skipped_steps"]] == [min(s + 1, 3) for s in range(20)]
    assert [v for _, v in scalars["train/lr"]] == pytest.approx(lr_curve(record), rel=1e-6)
    assert scalars["test/accuracy"] == [(9, pytest.approx(0.90)), (19, pytest.approx(0.95))]
    assert scalars["time/step_time_ms"] == [
        (e - 1, v) for e, v in zip(WINDOWS["window_end_step"], WINDOWS["window_step_time_ms"], strict=True)
    ]
    assert scalars["final/test_accuracy"] == [(19, pytest.approx(0.95))]
    assert "hparams" in plugins  # backend/policy/... for TensorBoard's HParams tab


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow-skinny not installed")
def test_mlflow_runs_read_back_through_the_client(write_run, no_network, monkeypatch):
    for key in ("MLFLOW_ALLOW_FILE_STORE", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(key, raising=False)
    records = _records()
    run = write_run("run", records)
    target, count = export_run(run, "mlflow")
    assert count == 2 and target == run / "mlruns"
    assert os.environ["MLFLOW_ALLOW_FILE_STORE"] == "true" and os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=target.resolve().as_uri())
    (experiment,) = [e for e in client.search_experiments() if e.name.startswith("precision-suite-")]
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"mlp/digits/torch-amp/fp32/seed0", "mlp/digits/torch-amp/fp16-mixed/seed0"}
    fp16 = runs["mlp/digits/torch-amp/fp16-mixed/seed0"]
    assert fp16.data.params["policy"] == "fp16-mixed" and fp16.data.params["version/torch"] == "9.9.9"
    assert fp16.data.params["seed"] == "0" and fp16.data.params["device"] == "cpu"
    history = client.get_metric_history(fp16.info.run_id, "train/loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == list(
        zip(records[1]["curves"]["step"], records[1]["curves"]["train_loss"], strict=True)
    )
    accuracy = client.get_metric_history(fp16.info.run_id, "test/accuracy")
    assert sorted((m.step, m.value) for m in accuracy) == [(9, pytest.approx(0.90)), (19, 0.95)]
    assert fp16.info.status == "FINISHED"


def _wandb_records(path: str):
    """W&B's offline run file: LevelDB-log framing (32 KiB blocks of CRC'd chunks) around
    wandb Record protos, after a 7-byte ':W&B' header."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw = open(path, "rb").read()
    ident, magic, _version = struct.unpack("<4sHB", raw[:7])
    assert ident == b":W&B" and magic == 0xBEE1
    block, pos, parts = 32768, 7, b""
    while pos + 7 <= len(raw):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        data = raw[pos + 7 : pos + 7 + length]
        pos += 7 + length
        parts = data if kind in (1, 2) else parts + data
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(parts)
            yield record


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb not installed")
def test_wandb_offline_run_folders_hold_the_curves(write_run, no_network, monkeypatch):
    for key in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(key, raising=False)
    records = _records()
    run = write_run("run", records)
    target, count = export_run(run, "wandb")
    assert os.environ["WANDB_MODE"] == "offline" and count == 2
    folders = sorted(glob.glob(str(target / "wandb" / "offline-run-*")))
    assert len(folders) == 2  # offline-run-*: nothing was synced
    by_name = {}
    for folder in folders:
        (run_file,) = glob.glob(os.path.join(folder, "run-*.wandb"))
        history, name, config = [], None, {}
        for record in _wandb_records(run_file):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                name = record.run.display_name
                config = {u.key: u.value_json for u in record.run.config.update}
            elif kind == "history":
                history.append({i.key or "/".join(i.nested_key): i.value_json for i in record.history.item})
        by_name[name] = (history, config)
    assert set(by_name) == {"mlp/digits/torch-amp/fp32/seed0", "mlp/digits/torch-amp/fp16-mixed/seed0"}, by_name
    history, config = by_name["mlp/digits/torch-amp/fp16-mixed/seed0"]
    assert config["policy"] == '"fp16-mixed"' and config["version/torch"] == '"9.9.9"'
    losses = [float(h["train/loss"]) for h in history if "train/loss" in h]
    assert losses == pytest.approx(records[1]["curves"]["train_loss"])
    assert [int(h["_step"]) for h in history] == list(range(20))
    assert [float(h["test/accuracy"]) for h in history if "test/accuracy" in h] == pytest.approx([0.90, 0.95])


def test_a_missing_tracker_is_one_line_naming_the_extra(write_run, monkeypatch, capsys):
    import precision_suite.outputs.export as export

    real = export.find_spec
    monkeypatch.setattr(export, "find_spec", lambda name: None if name == "mlflow" else real(name))
    run = write_run("run", _records())
    assert main(["export", str(run), "--to", "mlflow"]) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install 'precision-suite[mlflow]'" in err and len(err.splitlines()) == 1


def test_job_series_leaves_non_finite_values_out():
    record = _records()[0]
    record["curves"]["train_loss"][5] = None
    series = job_series(record)
    assert 5 not in [s for s, _ in series.scalars["train/loss"]] and len(series.scalars["train/loss"]) == 19
