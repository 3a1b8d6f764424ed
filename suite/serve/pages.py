"""serve's pages: what each shows is a list of the report's own sections (``report.sections``:
tables, paragraphs, bullets, plots) drawn by the report's HTML drawer (``report.documents``);
this module adds only the page around them — navigation, the forms, the live-progress script."""

from __future__ import annotations

import html
from collections.abc import Sequence
from urllib.parse import quote, urlencode

from precision_suite.outputs import diff
from precision_suite.report.cells import CAVEAT, CODE
from precision_suite.report.documents import HTML_STYLE, html_block
from precision_suite.report.plots import Plot
from precision_suite.report.sections import Bullets, Cell, Column, Image, Item, Paragraph, Section, Span, Table, plain
from precision_suite.serve.history import HistoryPoint, row_id
from precision_suite.serve.runs import RunSummary
from precision_suite.verdicts.compare import FAIL, INCONCLUSIVE, INFO, PASS

FILTERS = ("model", "device", "backend")
POLL_MS = 2000

_PAGE_STYLE = """
nav { margin-bottom: 1em; } nav a { margin-right: 1.2em; font-weight: 600; }
form.inline { margin: 0.5em 0 1em; } form.inline label { margin-right: 1em; }
iframe.report { width: 100%; border: 1px solid #ddd; min-height: 600px; }
#progress { margin: 0.5em 0; } .error { color: #c5221f; font-weight: 600; }
figure svg { max-width: 100%; height: auto; } textarea { font-family: monospace; }
"""

# Polls the small JSON endpoint; when a run wrote a record (or started or ended) the runs table is
# fetched again and swapped in: the page follows a run without a reload.
_LIVE_SCRIPT = """
<script>
(function () {
  let seen = null;
  async function poll() {
    try {
      const state = await (await fetch("/api/progress")).json();
      const line = document.getElementById("progress");
      if (line) line.textContent = state.line;
      if (seen !== null && state.signature !== seen) {
        const table = document.getElementById("runs");
        if (table) table.innerHTML = await (await fetch("/fragment/runs" + location.search)).text();
        const report = document.getElementById("live-report");
        if (report) report.innerHTML = await (await fetch("/fragment/report/" + report.dataset.run)).text();
      }
      seen = state.signature;
    } catch (e) { /* the server stopped: keep the page as it is */ }
    setTimeout(poll, POLL_MS);
  }
  poll();
})();
</script>
""".replace("POLL_MS", str(POLL_MS))

_FIT_IFRAME = (
    "<script>function fit(frame){try{frame.style.height="
    "(frame.contentDocument.documentElement.scrollHeight+30)+'px';}catch(e){}}</script>"
)


def draw(sections: Sequence[Section]) -> str:
    out = []
    for section in sections:
        title = html.escape(section.title)
        out.append(f"<h2>{title}</h2>" if title else "")
        out += [html_block(block) for block in section.blocks]
    return "\n".join(out)


def page(title: str, body: str, live: bool = False) -> str:
    nav = '<nav><a href="/">Runs</a><a href="/history">History</a><a href="/start">Start a run</a></nav>'
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)} — precision-suite</title><style>{HTML_STYLE}{_PAGE_STYLE}</style>"
        f"</head><body>\n{nav}<h1>{html.escape(title)}</h1>\n{body}\n{_LIVE_SCRIPT if live else ''}</body></html>\n"
    )


def _select(name: str, options: Sequence[str], chosen: str, empty: str | None = None) -> str:
    items = [f'<option value="">{html.escape(empty)}</option>'] if empty is not None else []
    items += [
        f'<option value="{html.escape(o)}"{" selected" if o == chosen else ""}>{html.escape(o)}</option>'
        for o in options
    ]
    return f'<select name="{name}" id="{name}">{"".join(items)}</select>'


def run_url(name: str) -> str:
    return "/run/" + quote(name)


def file_url(name: str, file: str) -> str:
    return "/files/" + quote(f"{name}/{file}")


# --- the runs list ---------------------------------------------------------------------------------


def _fmt_wall(summary: RunSummary) -> str:
    if summary.wall_s is None:
        return "—"
    text = f"{summary.wall_s / 60:.1f} min" if summary.wall_s >= 120 else f"{summary.wall_s:.1f} s"
    return text if summary.wall_source == "span" else f"{text} (Σ jobs)"


def _count(value: int, style: str) -> Span:
    return Span(str(value), style if value else "")


def _state(summary: RunSummary, running: str | None) -> Cell:
    if summary.name == running:
        return Cell((Span("running", CAVEAT),))
    if summary.error:
        return Cell((Span(summary.error, INFO),))
    if summary.has_report:
        return Cell((Span("report", href=run_url(summary.name)),))
    return Cell((Span("no report yet", INFO),))


RUN_COLUMNS = [
    Column("started", align="left", no_wrap=True),
    Column("run", align="left"),
    Column("config", align="left"),
    Column("machine · device", align="left"),
    Column("commit", align="left"),
    Column("jobs ok / failed"),
    Column("verdicts pass / fail / inconclusive"),
    Column("wall time"),
    Column("state", align="left"),
]


def runs_table(summaries: Sequence[RunSummary], running: str | None) -> Table:
    rows = [
        [
            Cell(plain(s.started.strftime("%Y-%m-%d %H:%M:%S"))),
            Cell((Span(s.name, CODE, href=run_url(s.name)),)),
            Cell(plain(s.config) if s.config else (Span(", ".join(sorted(s.models)) or "—", INFO),)),
            Cell(plain(f"{s.machine} · {s.device}")),
            Cell((Span(s.git_commit[:12], CODE),)),
            Cell((_count(s.jobs_ok, PASS), Span(" / "), _count(s.jobs_failed, FAIL))),
            Cell(
                (
                    _count(s.verdicts_passed, PASS),
                    Span(" / "),
                    _count(s.verdicts_failed, FAIL),
                    Span(" / "),
                    _count(s.verdicts_inconclusive, INCONCLUSIVE),
                )
            ),
            Cell(plain(_fmt_wall(s))),
            _state(s, running),
        ]
        for s in summaries
    ]
    return Table(RUN_COLUMNS, rows)


def filtered(summaries: Sequence[RunSummary], filters: dict[str, str]) -> list[RunSummary]:
    out = []
    for s in summaries:
        values = {"model": s.models, "device": s.devices, "backend": s.backends}
        if all(not filters.get(key) or filters[key] in values[key] for key in FILTERS):
            out.append(s)
    return out


def runs_fragment(summaries: Sequence[RunSummary], filters: dict[str, str], running: str | None) -> str:
    shown = filtered(summaries, filters)
    if not shown:
        return draw([Section("", [Paragraph(plain("No run matches." if summaries else "No run here yet."), INFO)])])
    return draw([Section("", [runs_table(shown, running)])])


def runs_page(summaries: Sequence[RunSummary], filters: dict[str, str], running: str | None, root: str) -> str:
    choices = {
        "model": sorted({m for s in summaries for m in s.models}),
        "device": sorted({d for s in summaries for d in s.devices}),
        "backend": sorted({b for s in summaries for b in s.backends}),
    }
    selects = "".join(
        f"<label>{key} {_select(key, choices[key], filters.get(key, ''), empty='any')}</label>" for key in FILTERS
    )
    names = [s.name for s in summaries]
    old = names[1] if len(names) > 1 else (names[0] if names else "")
    compare = (
        '<form class="inline" method="get" action="/compare" id="compare-form">'
        f"<label>OLD {_select('old', names, old)}</label><label>NEW {_select('new', names, names[0] if names else '')}"
        '</label><button type="submit">compare</button></form>'
    )
    body = (
        f'<p class="info">{len(summaries)} run(s) under <code>{html.escape(root)}</code>, newest first.</p>'
        f'<form class="inline" method="get" action="/" id="filters">{selects}'
        '<button type="submit">filter</button></form>'
        f'<p id="progress" class="info"></p><div id="runs">{runs_fragment(summaries, filters, running)}</div>'
        f"<h2>Compare two runs</h2>{compare}"
    )
    return page("Runs", body, live=True)


# --- one run ---------------------------------------------------------------------------------------


def run_page(summary: RunSummary, files: Sequence[str], live_report: str | None) -> str:
    """The run's links, and its report.html (or, before it is written, the report drawn from the
    records so far, refreshed as they arrive)."""
    links: list[Span] = []
    for f in files:
        links += [Span(" · ")] * bool(links) + [Span(f, CODE, href=file_url(summary.name, f))]
    facts = (
        f"started {summary.started:%Y-%m-%d %H:%M:%S} · config {summary.config or '—'} · {summary.machine} · "
        f"{summary.device} · commit {summary.git_commit} · jobs ok {summary.jobs_ok}, failed {summary.jobs_failed}"
    )
    history = Span("history of its rows", href="/history?" + urlencode({"run": summary.name}))
    sections = [
        Section("", [Paragraph(plain(facts), INFO), Paragraph((history,))]),
        Section("Files", [Paragraph(tuple(links))]),
    ]
    body = draw(sections) + '<p id="progress" class="info"></p><h2>Report</h2>'
    if live_report is None:
        src = html.escape(file_url(summary.name, "report.html"))
        body += f'{_FIT_IFRAME}<iframe class="report" id="report" src="{src}" onload="fit(this)"></iframe>'
    else:
        body += '<p class="info">No report.html yet: the report below is drawn from the records so far (no plots).</p>'
        body += f'<div id="live-report" data-run="{html.escape(quote(summary.name))}">{live_report}</div>'
    return page(f"Run {summary.name}", body, live=live_report is not None)


def report_body(report_html: str) -> str:
    """The body of a rendered report document (drawn inside a run's page before report.html exists)."""
    start = report_html.find("<body>")
    end = report_html.rfind("</body>")
    return report_html[start + len("<body>") : end] if start >= 0 and end > start else report_html


# --- compare ---------------------------------------------------------------------------------------


def _diff_cell(text: str) -> Cell:
    if text == "**changed**":
        return Cell((Span("changed", CAVEAT),))
    return Cell(plain(text))


def compare_sections(result: diff.RunDiff) -> list[Section]:
    """``precision-suite diff``'s content (its summary, changed verdicts and rows) as sections."""
    lines = diff.summary_lines(result)
    summary = [Paragraph((Span(line, FAIL if line.startswith("REGRESSED") else ""),)) for line in lines[:1]]
    summary.append(Bullets([Item(plain(line)) for line in lines[1:]]))
    verdicts = diff.verdict_rows(result)
    verdict_columns = [Column(h, align="left") for h in ["row", "verdict", "OLD", "NEW", ""]]
    verdict_block = (
        Table(verdict_columns, [[Cell(plain(c)) for c in row] for row in verdicts])
        if verdicts
        else Paragraph(plain("none"), INFO)
    )
    rows = Table(
        [Column(h, align="left" if i < 3 or i > 5 else "right") for i, h in enumerate(diff.HEADER)],
        [[_diff_cell(c) for c in row] for row in diff.table_rows(result)],
    )
    note = Paragraph(
        plain(
            "Δ = NEW − OLD: mean of per-seed paired differences with its 95% t interval (accuracy, mean train loss, "
            "memory); speedup: each run's own speedup and interval, a change when the intervals do not overlap."
        ),
        INFO,
    )
    return [
        Section("Summary", summary),
        Section("Verdicts that changed", [verdict_block]),
        Section("Rows", [rows, note]),
    ]


def compare_page(names: Sequence[str], old: str, new: str, result: diff.RunDiff | None, error: str) -> str:
    form = (
        '<form class="inline" method="get" action="/compare" id="compare-form">'
        f"<label>OLD {_select('old', names, old)}</label><label>NEW {_select('new', names, new)}</label>"
        '<button type="submit">compare</button></form>'
    )
    if error:
        body = form + f'<p class="error" id="error">{html.escape(error)}</p>'
    elif result is None:
        body = form
    else:
        heading = draw(
            [
                Section(
                    "",
                    [
                        Paragraph(
                            (
                                Span("OLD "),
                                Span(old, CODE, href=run_url(old)),
                                Span("  NEW "),
                                Span(new, CODE, href=run_url(new)),
                            )
                        )
                    ],
                )
            ]
        )
        body = form + heading + f'<div id="diff">{draw(compare_sections(result))}</div>'
    return page("Compare two runs", body)


# --- history ---------------------------------------------------------------------------------------


def history_index(keys: Sequence[tuple[str, ...]], run: str = "") -> str:
    rows = [
        [Cell(plain(part)) for part in key[:3]]
        + [Cell((Span(f"{key[3]} {key[4]}", href="/history?" + urlencode({"row": row_id(key)})),))]
        for key in keys
    ]
    columns = [Column(h, align="left") for h in ("model", "dataset", "device", "row")]
    what = f"the rows of {run}" if run else "every row of any run"
    intro = Paragraph(
        plain(f"Follow one row across runs ({what}; fp32 baselines have no Δ or speedup to follow)."), INFO
    )
    return page("History", draw([Section("", [intro, Table(columns, rows)])]))


def history_page(key: tuple[str, ...], points: Sequence[HistoryPoint], plots: Sequence[Plot]) -> str:
    def fmt(interval, unit: str) -> str:
        return interval.format(unit, undefined=" (no CI)")

    rows = [
        [
            Cell(plain(f"{p.started:%Y-%m-%d %H:%M}")),
            Cell((Span(p.run, CODE, href=run_url(p.run)),)),
            Cell(plain(p.machine)),
            Cell(plain(fmt(p.delta_pts, " pt"))),
            Cell(plain(fmt(p.speedup, "×"))),
            Cell(plain(fmt(p.memory_ratio, "×"))),
        ]
        for p in points
    ]
    columns = [Column(h, align="left") for h in ("started", "run", "machine")]
    columns += [Column("accuracy Δ (95% CI)"), Column("speedup (95% CI)"), Column("memory ratio (95% CI)")]
    legend = Paragraph(
        plain("One series per machine (host · device), never one line through two; click a point to open its run."),
        INFO,
    )
    sections = [
        Section("", [legend, *[Image(plot) for plot in plots]]),
        Section("Runs", [Table(columns, rows)]),
    ]
    return page(f"History of {' · '.join(key[:3])} {key[3]} {key[4]}", draw(sections))


# --- start a run -----------------------------------------------------------------------------------


def start_page(
    configs: Sequence[str],
    chosen: str,
    overrides: str,
    token: str,
    error: str = "",
    allowed: Sequence[str] = (),
    running: str | None = None,
) -> str:
    busy = ""
    if running:
        busy = f'<p class="warn">A run is in progress: <a href="{run_url(running)}">{html.escape(running)}</a>.</p>'
    body = (
        busy
        + (f'<p class="error" id="error">{html.escape(error)}</p>' if error else "")
        + '<form method="post" action="/start" id="start-form">'
        + f"<p><label>config {_select('config', configs, chosen)}</label></p>"
        + "<p><label>overrides, one <code>KEY=VALUE</code> a line, as <code>--set</code> (allowed: "
        + html.escape(", ".join(allowed))
        + ')<br><textarea name="overrides" id="overrides" rows="5" cols="70" '
        + 'placeholder="seeds=[0, 1, 2]&#10;train.epochs=3&#10;backends.names=[torch-amp]">'
        + html.escape(overrides)
        + "</textarea></label></p>"
        + '<p><label>token (printed by <code>precision-suite serve</code> at start) <input name="token" id="token" '
        + f'type="password" size="40" value="{html.escape(token)}"></label></p>'
        + '<p><button type="submit" id="start">start</button></p></form>'
    )
    return page("Start a run", body)
