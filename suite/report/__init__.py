"""What a comparison looks like: rich tables in the terminal, report.md, a self-contained
report.html with plots, summary.csv and the plot PNGs.

``cells`` formats the values every rendering shows; ``sections`` says once what the report
shows (a list of sections of tables, paragraphs, bullet lists and plots); ``terminal`` and
``documents`` only draw those sections, ``plots`` draws the figures; this module re-exports what
the CLI and the outputs use.
"""

from precision_suite.report.cells import (  # noqa: F401
    CSS_CLASS,
    EQUIVALENCE_HEADER,
    FRAMEWORK_COLOURS,
    STYLE,
    equivalence_cells,
    equivalence_rows,
    fmt_accuracy,
    fmt_bytes,
    fmt_delta,
    fmt_memory,
    fmt_number,
    fmt_seeds,
    fmt_speedup,
    seeds_advice,
    speed_explanation,
    speed_notes,
    verdict_cells,
)
from precision_suite.report.documents import (  # noqa: F401
    SUMMARY_COLUMNS,
    render_html,
    render_markdown,
    summary_row,
    write_reports,
    write_summary_csv,
)
from precision_suite.report.plots import (  # noqa: F401
    Plot,
    make_plots,
    slug,
)
from precision_suite.report.sections import (  # noqa: F401
    DOCUMENTS,
    TERMINAL,
    Report,
    Section,
    build_report,
    environment_table,
    group_title,
    job_note_sections,
    view,
)
from precision_suite.report.terminal import (  # noqa: F401
    print_sections,
    print_verdicts,
    render_terminal,
)
