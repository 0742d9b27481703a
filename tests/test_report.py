"""The readable `verify` report: the printed table fits 100 columns without cutting text, explains
its columns, keeps the notes, summarises each theorem; the HTML page is self-contained. Rows come
from a saved report (tests/data/verify_report.json), one of them untested."""

import html
import json
import os
import re

import pytest

from oblr_theory.verify import report as R
from oblr_theory.verify import report_html

DATA = os.path.join(os.path.dirname(__file__), "data", "verify_report.json")


@pytest.fixture(scope="module")
def saved():
    with open(DATA) as fh:
        return json.load(fh)


def _words(text):
    return re.findall(r"\S+", text)


def test_table_fits_100_columns_and_cuts_nothing(saved):
    rows = saved["rows"]
    text = R.format_table(rows)
    assert max(len(line) for line in text.splitlines()) <= R.LINE_WIDTH
    assert "…" not in text and "..." not in text
    flat = " ".join(_words(text))
    for r in rows:  # every word of every problem and statement is printed whole
        for word in _words(r["statement"]) + _words(r["problem"]):
            assert word in flat, word


def test_long_statement_wraps_under_its_column():
    row = R.Row("T4", "E J(θ+ηĝ) ≥ J + η∇J·m − Lη²(||m||²+V)/2 "
                "(optimal_loo_shrink, η ∈ {η*, 1, 3, 10}/L)",
                "bandit X=2 K=3 (random θ), G=3, B=2", "exact", 1.0, 2.0, 0.5, 0.0, True)
    lines = R.format_table([row]).splitlines()
    body = lines[lines.index(next(line for line in lines if line.startswith("-"))) + 1:]
    assert len(body) >= 3  # wrapped, not cut
    start = R.TABLE_COLUMNS[0][1] + 1  # the statement column
    assert all(line[start] != " " for line in body[:3])  # each wrapped piece starts in its column
    assert "optimal_loo_shrink," in " ".join(body)


def test_legend_and_notes_are_printed(saved):
    text = R.format_table(saved["rows"])
    for name, _, _ in R.TABLE_COLUMNS:
        assert re.search(rf"^  {re.escape(name)}\s", text, re.M), name
    assert "detectable" in text and "Bonferroni" in text
    notes = [r["note"] for r in saved["rows"] if r["note"] and r["kind"] != "symbolic"]
    assert notes
    flat = " ".join(_words(text))
    for note in notes:
        assert " ".join(_words(note)) in flat


def test_untested_rows_are_not_counted_as_holding(saved):
    rows = saved["rows"]
    untested = [r for r in rows if r["passed"] is None]
    assert len(untested) == 1
    assert R.outcome(untested[0]) == "untested" and R.verdict(untested[0]) == "untested"
    label = untested[0]["claim"]
    s = R.theorem_summary(rows, label)
    assert len(s["untested"]) == 1 and s["holds"] + s["fails"] + 1 == s["rows"]
    summary = R.format_summary(rows)
    assert "untested:" in summary
    # a Row object with passed=None (the outcome field of the claims) reads the same
    row = R.Row("T1", "s", "p", "exact", None, None, None, None, None)
    assert R.outcome(row) == "untested"


def test_summary_per_theorem_fits_one_screen(saved):
    rows = saved["rows"]
    summary = R.format_summary(rows)
    labels = list(dict.fromkeys(r["claim"] for r in rows))
    assert max(len(line) for line in summary.splitlines()) <= R.LINE_WIDTH
    assert len(summary.splitlines()) <= 50
    for label in labels:
        assert re.search(rf"^  {label} .*rows", summary, re.M), label
    assert "Not checked:" in summary and "negative controls caught" in summary


def test_failing_row_is_visible(saved):
    rows = [dict(saved["rows"][0], passed=False, verdict="FAILS")]
    assert "FAILS" in R.format_table(rows)
    assert "1 fail" in R.format_summary(rows)


def test_html_is_self_contained(saved, tmp_path):
    figs = tmp_path / "figs"
    figs.mkdir()
    from oblr_theory.plotstyle import figure, save

    fig, _ = figure()
    save(fig, str(figs), "demo", "a demo caption", dpi=40)
    path = tmp_path / "report.html"
    report_html.write_html(str(path), saved, figures_dir=str(figs))
    page = path.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:|#)""", page)  # nothing outside the page
    assert "<script" not in page and "<link" not in page
    assert "data:image/png;base64," in page and "a demo caption" in page
    for name, _, _ in R.TABLE_COLUMNS:
        assert f"<th>{name}</th>" in page
    assert "untested" in page and "Summary per theorem" in page and "<th>not checked</th>" in page
    for r in saved["rows"]:
        assert html.escape(r["statement"]) in page


def test_verify_html_flag_writes_the_page(tmp_path, capsys):
    """``oblr-theory verify --html PATH`` on one cheap theorem: the page and the printed table."""
    from oblr_theory import verify

    path = tmp_path / "r.html"
    assert verify.main(["--quick", "--only", "T5", "--jobs", "1", "--html", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Columns:" in out and "Summary per theorem" in out and "T5 SNR learning rate" in out
    assert max(len(line) for line in out.splitlines()) <= R.LINE_WIDTH
    page = path.read_text()
    assert "T5: SNR learning rate" in page and "<th>statement</th>" in page
