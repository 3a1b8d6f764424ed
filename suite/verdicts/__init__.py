"""Only reads records and decides: the comparison, the equivalence statistics, the
cross-framework, data-parallel and speed verdicts, the hardware (emulated or native) and
the why-no-speedup diagnosis.

Never imports ``execution/`` or a framework (torch, tensorflow, keras, jax, ray), at module
level or inside a function: a results file is judged on any machine
(tests/test_layout.py)."""
