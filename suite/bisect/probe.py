"""bisect's proxy, in its own process (``python -m precision_suite.bisect.probe IN OUT``), so the
command itself never imports a framework: the candidate job and its fp32 reference are set up from
the same initial weights, and ``Backend.probe_blocks`` measures every block's own error on the
first training steps' batches. IN holds ``{"job", "reference", "steps"}`` (jobs as
``Job.to_dict``); OUT gets ``{"blocks", "errors"}``."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from precision_suite.backends import get_backend_class
from precision_suite.data import batch_plan, load_dataset
from precision_suite.jobs import Job
from precision_suite.models import initial_weights


def probe(job: Job, reference: Job, steps: int) -> dict[str, Any]:
    data = load_dataset(job.data)
    weights = initial_weights(job, data)
    candidate, fp32 = get_backend_class(job.backend)(), get_backend_class(reference.backend)()
    candidate.setup(job, weights, data)
    try:
        fp32.setup(reference, weights, data)
        try:
            plan = batch_plan(len(data.y_train), job.train.batch_size, job.seed, None, steps)
            names = candidate.block_names()
            errors = candidate.probe_blocks(fp32, names, [rows for _, rows in plan])
        finally:
            fp32.teardown()
    finally:
        candidate.teardown()
    return {"blocks": names, "errors": [asdict(e) for e in errors]}


def main(argv: list[str]) -> int:
    source, target = Path(argv[0]), Path(argv[1])
    spec = json.loads(source.read_text())
    result = probe(Job.from_dict(spec["job"]), Job.from_dict(spec["reference"]), int(spec["steps"]))
    target.write_text(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
