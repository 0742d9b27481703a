"""``oblr-theory verify --html PATH``: the report as one self-contained HTML page for sharing a run.

The same tables as the printed report (:mod:`.report`: column legend, a summary per theorem, the
rows grouped by theorem with their notes), styled by inline CSS, and the figure gallery embedded
as base64 PNG (``docs/figures/*.png`` of the source checkout, each with its caption ``.txt``).
No external file, script or font is referenced.
"""

from __future__ import annotations

import base64
import glob
import html
import os

from ..results import atomic_write_text
from .report import (TABLE_COLUMNS, THEOREM_TITLES, _get, _labels, _num, detectable, gaps_text, outcome,
                     strength_text, theorem_summary, verdict)

__all__ = ["render_html", "write_html", "default_figures_dir"]

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;width:100%;margin:.5em 0 1em}
th,td{border-bottom:1px solid #e4e4e4;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{font-family:ui-monospace,Menlo,Consolas,monospace;white-space:nowrap}
tr.note td{color:#555;font-size:.9em;border-bottom:1px solid #e4e4e4;padding-left:2em}
.holds,.caught,.proved{color:#117733;font-weight:600}.FAILS,.MISSED,.FAILED{color:#CC3311;font-weight:700}
.untested{color:#997700;font-weight:600}pre{background:#f7f7f7;padding:.6em;white-space:pre-wrap}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.9em;color:#444}
"""


def default_figures_dir() -> str | None:
    """``docs/figures`` of the source checkout, when there is one."""
    d = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "docs", "figures")
    return os.path.normpath(d) if os.path.isdir(d) else None


def _rows_table(rows) -> str:
    head = "".join(f"<th>{html.escape(name)}</th>" for name, _, _ in TABLE_COLUMNS)
    out = [f"<table><tr>{head}</tr>"]
    for r in rows:
        v = verdict(r)
        cells = [html.escape(str(_get(r, "problem"))), html.escape(str(_get(r, "statement")))]
        nums = [_num(_get(r, k), 10) for k in ("exact", "estimate", "statistic", "threshold")] + [detectable(r)]
        out.append("<tr><td>" + "</td><td>".join(cells) + "</td>"
                   + "".join(f'<td class="num">{html.escape(x)}</td>' for x in nums)
                   + f'<td class="{html.escape(v)}">{html.escape(v)}</td></tr>')
        note = _get(r, "note") or ""
        if note and _get(r, "kind") != "symbolic":
            out.append(f'<tr class="note"><td colspan="{len(TABLE_COLUMNS)}">↳ {html.escape(note)}</td></tr>')
    out.append("</table>")
    return "\n".join(out)


def _summary_table(rows) -> str:
    heads = ("theorem", "rows", "hold", "fail", "untested", "exact", "Monte Carlo", "negative controls caught",
             "symbolic", "strength", "not checked")
    out = ["<table><tr>" + "".join(f"<th>{h}</th>" for h in heads) + "</tr>"]
    for label in _labels(rows):
        s = theorem_summary(rows, label)
        name = html.escape(f"{label} {s['title']}")
        cells = (f'<a href="#{html.escape(str(label))}">{name}</a>',
                 s["rows"], s["holds"], s["fails"], len(s["untested"]), s["exact"], s["monte_carlo"],
                 f"{s['caught']}/{s['negative']}", s["symbolic"], html.escape(strength_text(s) or "—"),
                 html.escape(gaps_text(s)))
        cls = ' class="FAILS"' if s["fails"] else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _figures(figures_dir: str | None) -> str:
    if not figures_dir or not os.path.isdir(figures_dir):
        return "<p>No figures found (run <code>oblr-theory figures --docs</code>).</p>"
    parts = []
    for png in sorted(glob.glob(os.path.join(figures_dir, "*.png"))):
        stem = os.path.splitext(png)[0]
        with open(png, "rb") as fh:
            data = base64.b64encode(fh.read()).decode("ascii")
        caption = ""
        if os.path.exists(stem + ".txt"):
            with open(stem + ".txt") as fh:
                caption = fh.read()
        parts.append(f'<figure><img alt="{html.escape(os.path.basename(stem))}" src="data:image/png;base64,{data}">'
                     f"<figcaption><b>{html.escape(os.path.basename(stem))}.</b> {html.escape(caption)}"
                     "</figcaption></figure>")
    return "\n".join(parts) or "<p>No figures found.</p>"


def render_html(report: dict, rows=None, figures_dir: str | None = None) -> str:
    """The page: run metadata, column legend, summary per theorem, rows by theorem, figures."""
    rows = rows if rows is not None else report["rows"]
    meta, summ = report.get("meta", {}), report.get("summary", {})
    n_fail = sum(outcome(r) == "fails" for r in rows)
    n_untested = sum(outcome(r) == "untested" for r in rows)
    status = "all claims hold" if n_fail == 0 else f"{n_fail} rows FAIL"
    legend = "".join(f"<tr><td><b>{html.escape(n)}</b></td><td>{html.escape(w)}</td></tr>" for n, _, w in TABLE_COLUMNS)
    body = [f"<h1>oblr-theory verify: {html.escape(status)}</h1>",
            f"<p>{len(rows)} rows ({n_untested} untested); seed {html.escape(str(meta.get('seed')))}, "
            f"quick {html.escape(str(meta.get('quick')))}, family-wise rate α = {html.escape(str(meta.get('alpha')))} "
            f"over {html.escape(str(meta.get('num_tests')))} calibrated tests, revision "
            f"<code>{html.escape(str(meta.get('git_revision', ''))[:12])}</code>, "
            f"{float(summ.get('seconds', 0)):.1f} s."
            + (f" Left out by --quick: {html.escape(', '.join(meta['quick_dropped']) or 'nothing')}."
               if meta.get("quick") and "quick_dropped" in meta else "") + "</p>",
            "<h2>Columns</h2>", f"<table>{legend}</table>",
            "<h2>Summary per theorem</h2>",
            "<p>A true claim holds while stat/thresh ≤ 1; a negative control (a false claim) must be rejected.</p>",
            _summary_table(rows)]
    for label in _labels(rows):
        sub = [r for r in rows if _get(r, "claim") == label]
        title = f"{label}: {THEOREM_TITLES.get(label, '')}".rstrip(": ")
        body += [f'<h2 id="{html.escape(str(label))}">{html.escape(title)} ({len(sub)} rows)</h2>', _rows_table(sub)]
    body += ["<h2>Figures</h2>", _figures(figures_dir)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>oblr-theory verify</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_html(path: str, report: dict, rows=None, figures_dir: str | None = None) -> None:
    """Write :func:`render_html` to ``path`` atomically (figures from ``docs/figures`` by default)."""
    atomic_write_text(os.path.abspath(path), render_html(report, rows, figures_dir or default_figures_dir()))
