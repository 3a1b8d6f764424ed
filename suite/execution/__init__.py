"""Runs in the parent process and dispatches: the runner, the executors (local worker
processes, Ray), the worker and data-parallel rank entry points, placement, seeds on demand.

May import anything of the suite; never a framework at module level (a worker or rank
process imports its framework through the backend it runs)."""
