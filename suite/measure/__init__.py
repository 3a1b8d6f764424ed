"""Runs in the worker processes and measures: the timed training loop, the paired speed
phase, timing windows, the environment of a record, the memory accounting, model FLOPs.

Never imports ``verdicts/``: what is measured does not depend on how it is judged
(tests/test_layout.py)."""
