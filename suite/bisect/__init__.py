"""``precision-suite bisect``: the fewest blocks to keep in fp32 for a half policy to pass parity.

``search`` (the search and the proxy ranking, framework-free), ``record`` (bisect.json, read by
``advise`` on any machine), ``probe`` (the proxy, run in its own process, where the framework is
imported), ``command`` (endpoints, trials through the runner, the final verdict, bisect.md).
"""
