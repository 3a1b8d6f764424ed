"""``precision-suite serve``: a local web page over a folder of runs — the runs list, one run's
report, the diff of two runs, the history of a row across runs, starting a run.

Like ``outputs/`` and ``report/``, it only reads records (``outputs.rundir.load_run``) and draws
the report's own sections; a run it starts is a child process (``python -m precision_suite.cli
run``), so the server never imports a framework or the user's code.
"""
