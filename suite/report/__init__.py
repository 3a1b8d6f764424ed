"""What a comparison looks like: rich tables in the terminal, report.md, a self-contained
report.html with plots, summary.csv and the plot PNGs.

``cells`` formats the values every rendering shows; ``sections`` says once what the report
shows (a list of sections of tables, paragraphs, bullet lists and plots); ``terminal`` and
``documents`` only draw those sections, ``plots`` draws the figures; this module re-exports what
the CLI uses (and the section model's entry points).
"""

from precision_suite.report.documents import render_html, render_markdown, write_reports  # noqa: F401
from precision_suite.report.plots import start_plots  # noqa: F401
from precision_suite.report.sections import DOCUMENTS, TERMINAL, build_report, view  # noqa: F401
from precision_suite.report.terminal import print_verdicts, render_terminal  # noqa: F401
