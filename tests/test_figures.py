"""The figures: every script renders from small saved results (tests/data/figures) with no
overlapping text and no legend over a plotted point, judged by the figure's own layout data;
one colour and marker per estimator; the ``oblr-theory figures --quick`` pipeline (smoke)."""

import importlib.util
import itertools
import json
import os
import sys
import warnings

import numpy as np
import pytest

from oblr_theory import cli, figures, plotstyle
from oblr_theory.plotstyle import plt

DATA = os.path.join(os.path.dirname(__file__), "data", "figures")
PAPER = os.path.join(os.path.dirname(__file__), "..", "paper_figures")


def _script(name):
    if PAPER not in sys.path:
        sys.path.insert(0, PAPER)
    spec = importlib.util.spec_from_file_location(f"_test_fig_{name}", os.path.join(PAPER, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- layout data of a drawn figure -------------------------------------------------------------

def _visible_ticklabels(axis):
    lo, hi = sorted(axis.get_view_interval())
    out = []
    for ticks in (axis.get_major_ticks(), axis.get_minor_ticks()):
        for t in ticks:
            loc = t.get_loc()
            if loc is None or not (lo - 1e-12 * max(1, abs(lo)) <= loc <= hi + 1e-12 * max(1, abs(hi))):
                continue
            out += [lab for lab in (t.label1, t.label2) if lab.get_visible() and lab.get_text()]
    return out


def _texts(fig):
    """(owner, Text) for every visible, non-empty text the figure draws; ``owner`` groups the
    texts of one legend (their boxes are checked against everything else, not each other)."""
    found = []
    for i, ax in enumerate(fig.axes):
        if not ax.get_visible():
            continue
        for t in (ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label, *ax.texts):
            found.append((f"ax{i}", t))
        for axis in (ax.xaxis, ax.yaxis):
            found += [(f"ax{i}", t) for t in _visible_ticklabels(axis)]
            found.append((f"ax{i}", axis.get_offset_text()))
        leg = ax.get_legend()
        if leg is not None:
            found += [(f"legend-ax{i}", t) for t in leg.get_texts()]
    for j, leg in enumerate(fig.legends):
        found += [(f"legend{j}", t) for t in leg.get_texts()]
    found += [("fig", t) for t in fig.texts]  # the suptitle is one of them
    unique = {id(t): (o, t) for o, t in found}
    return [(o, t) for o, t in unique.values() if t.get_visible() and t.get_text().strip()]


def _overlap(a, b, slack=0.5):
    return (min(a.x1, b.x1) - max(a.x0, b.x0) > slack) and (min(a.y1, b.y1) - max(a.y0, b.y0) > slack)


def text_overlaps(fig) -> list[str]:
    """Pairs of drawn texts whose boxes overlap (display coordinates, after layout)."""
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    boxes = [(o, t.get_text(), t.get_window_extent(r)) for o, t in _texts(fig)]
    bad = [f"{ta!r} / {tb!r}" for (oa, ta, a), (ob, tb, b) in itertools.combinations(boxes, 2)
           if not (oa == ob and oa.startswith("legend")) and _overlap(a, b)]
    legends = [leg for ax in fig.axes if (leg := ax.get_legend()) is not None] + list(fig.legends)
    for leg in legends:
        lb = leg.get_window_extent(r)
        bad += [f"legend over {t!r}" for o, t, b in boxes if not o.startswith("legend") and _overlap(lb, b)]
    return bad


def _points(ax):
    """Display coordinates of everything plotted in ``ax``: line vertices, scatter and errorbar
    offsets / segments, bar corners."""
    pts = []
    for line in ax.lines:
        xy = np.asarray(line.get_xydata(), dtype=float)
        if xy.size:
            pts.append(line.get_transform().transform(xy[np.isfinite(xy).all(1)]))
    for coll in ax.collections:
        off = np.asarray(coll.get_offsets(), dtype=float).reshape(-1, 2)
        if len(off) and coll.get_offset_transform() is not None and not np.allclose(off, 0):  # scatter
            pts.append(coll.get_offset_transform().transform(off[np.isfinite(off).all(1)]))
        else:  # error bars, bands: their path vertices
            for path in coll.get_paths():
                v = path.vertices[np.isfinite(path.vertices).all(1)]
                if len(v):
                    pts.append(coll.get_transform().transform(v))
    for p in ax.patches:
        if p.get_visible() and hasattr(p, "get_bbox"):
            bb = p.get_bbox()
            corners = np.array([[bb.x0, bb.y1], [bb.x1, bb.y1], [bb.x0, bb.y0], [bb.x1, bb.y0]])
            pts.append(p.get_transform().transform(corners))
    if not pts:
        return np.empty((0, 2))
    pts = np.concatenate(pts)
    box = ax.get_window_extent()  # only what is inside the axes is drawn
    inside = (pts[:, 0] >= box.x0) & (pts[:, 0] <= box.x1) & (pts[:, 1] >= box.y0) & (pts[:, 1] <= box.y1)
    return pts[inside]


def legend_covers(fig) -> list[str]:
    """Legends whose box holds a plotted point of any axes."""
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    legends = [leg for ax in fig.axes if (leg := ax.get_legend()) is not None] + list(fig.legends)
    bad = []
    for leg in legends:
        lb = leg.get_window_extent(r)
        for i, ax in enumerate(fig.axes):
            p = _points(ax)
            n = int(np.sum((p[:, 0] > lb.x0) & (p[:, 0] < lb.x1) & (p[:, 1] > lb.y0) & (p[:, 1] < lb.y1)))
            if n:
                bad.append(f"legend covers {n} point(s) of axes {i} ({ax.get_title()!r})")
    return bad


def style_mismatches(fig) -> list[str]:
    """Legend entries named after an estimator whose colour or marker is not the package's."""
    bad = []
    legends = [leg for ax in fig.axes if (leg := ax.get_legend()) is not None] + list(fig.legends)
    for leg in legends:
        for h, t in zip(leg.legend_handles, leg.get_texts()):
            name = t.get_text()
            if name in plotstyle.ESTIMATOR_STYLE and hasattr(h, "get_marker"):
                st = plotstyle.style(name)
                if plt.matplotlib.colors.to_hex(h.get_color()) != st.color.lower() or h.get_marker() != st.marker:
                    bad.append(f"{name}: {h.get_color()} {h.get_marker()} != {st.color} {st.marker}")
    return bad


# ---- the checks can fail (negative controls) ---------------------------------------------------

def test_checks_catch_overlap_and_covered_points():
    fig, axes = plotstyle.figure(plotstyle.SINGLE, 2.0)
    ax = axes[0, 0]
    ax.plot([0, 1], [0, 1], "o-", label="rloo")
    ax.text(0.5, 0.5, "a long label here", transform=ax.transAxes)
    ax.text(0.52, 0.5, "another long label", transform=ax.transAxes)
    ax.legend(loc="center", frameon=True, borderpad=4)
    ax.plot([0.5], [0.5], "s")
    assert text_overlaps(fig)
    assert legend_covers(fig)
    plt.close(fig)


def test_checks_pass_a_clean_figure():
    fig, axes = plotstyle.figure(plotstyle.SINGLE, 2.0)
    axes[0, 0].plot([0, 1], [0, 1], **plotstyle.style("rloo").kw())
    plotstyle.legend_below(fig, axes[0, 0].lines, ["rloo"])
    assert text_overlaps(fig) == [] and legend_covers(fig) == [] and style_mismatches(fig) == []
    plt.close(fig)


def test_style_mismatch_is_caught():
    fig, axes = plotstyle.figure(plotstyle.SINGLE, 2.0)
    axes[0, 0].plot([0, 1], [0, 1], color="red", marker="o")
    plotstyle.legend_below(fig, axes[0, 0].lines, ["rloo"])
    assert style_mismatches(fig)
    plt.close(fig)


# ---- every figure ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(figures.FIGURES))
def test_figure_layout(name):
    """Renders from tests/data/figures; paper width; no overlapping text; no legend over data;
    estimator colours and markers from plotstyle; a caption naming seeds and bands."""
    fig, caption = _script(name).build(DATA)
    try:
        assert fig.get_figwidth() in (plotstyle.SINGLE, plotstyle.DOUBLE)
        assert text_overlaps(fig) == []
        assert legend_covers(fig) == []
        assert style_mismatches(fig) == []
        assert "seed" in caption and ("band" in caption or "error bar" in caption or "bars" in caption), caption
        assert "TODO" not in caption and "placeholder" not in caption
    finally:
        plt.close(fig)


def test_every_estimator_has_one_colour_marker_pair():
    pairs = [(s.color, s.marker) for s in plotstyle.ESTIMATOR_STYLE.values()]
    assert len(set(pairs)) == len(pairs)
    from oblr_theory import estimators

    missing = [n for n in estimators.names() if n not in plotstyle.ESTIMATOR_STYLE]
    assert missing == []
    with pytest.raises(KeyError, match="add it"):
        plotstyle.style("no_such_estimator")


def test_qwen3_snr_undefined_is_na_not_zero():
    """The saved run's SNR is clipped to 0 (negative ‖∇J‖² estimate): drawn as n/a with the reason."""
    mod = _script("qwen3_validation")
    fig, caption = mod.build(DATA)
    try:
        ax = fig.axes[3]
        assert sum(t.get_text() == "n/a" for t in ax.texts) == len(mod.LABELS)
        heights = [p.get_height() for p in ax.patches]
        assert all(not np.isfinite(h) for h in heights)  # no bar at a fake zero
        assert "estimate" in caption and "< 0" in caption
        # jackknife error bars are drawn: one errorbar segment per estimator in panel (b)
        assert sum(len(c.get_segments()) for c in fig.axes[1].collections) >= len(mod.LABELS)
    finally:
        plt.close(fig)


def test_missing_qwen3_report_falls_back_to_saved_run(tmp_path, capsys):
    mod = _script("qwen3_validation")
    path = mod.find_report(str(tmp_path))
    assert "gpu_runs" in path and "saved run" in capsys.readouterr().err


def test_edge_note_is_one_line():
    spec = importlib.util.spec_from_file_location(
        "_test_comparison", os.path.join(os.path.dirname(__file__), "..", "experiments", "comparison.py"))
    comparison = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(comparison)
    tuned = json.load(open(os.path.join(DATA, "tuned.json")))
    note = comparison.edge_note(tuned)
    assert note.count("\n") == 0 and "hard_arm_bandit" in note
    assert comparison.edge_note({"f": {"m": {"at_edge": False}}}) is None


def test_smoke(tmp_path):
    """Quick experiments, then every figure as PNG, PDF and caption; a second run resumes."""
    res, fig = str(tmp_path / "results"), str(tmp_path / "figures")
    with warnings.catch_warnings():  # no RuntimeWarning reaches the terminal
        warnings.simplefilter("error", RuntimeWarning)
        assert cli.main(["figures", "--quick", "--results", res, "--figures", fig]) == 0
    for name in figures.FIGURES:
        for ext in ("png", "pdf", "txt"):
            path = os.path.join(fig, f"{name}.{ext}")
            assert os.path.getsize(path) > 100, path
    rows = [json.loads(line) for line in open(os.path.join(res, "comparison.jsonl"))]
    assert all({"key", "seed", "rev", "eta", "final_objective"} <= set(r) for r in rows)
    before = {f: os.path.getsize(os.path.join(res, f)) for f in os.listdir(res)}
    assert figures.main(["--quick", "--results", res, "--figures", fig, "--only", "t4_bound"]) == 0
    assert before == {f: os.path.getsize(os.path.join(res, f)) for f in os.listdir(res)}


def test_missing_results_is_reported(tmp_path):
    assert figures.main(["--results", str(tmp_path), "--figures", str(tmp_path / "f"), "--only", "t4_bound"]) == 1


def test_docs_gallery_is_current():
    """docs/figures.md is what `oblr-theory figures --quick --docs` writes from the committed
    docs/figures (each figure's PNG, caption and commands)."""
    root = figures.repo_root()
    text = figures.gallery(str(root / "docs" / "figures"), root, quick=True)
    assert (root / "docs" / "figures.md").read_text() == text
    for name in figures.FIGURES:
        assert (root / "docs" / "figures" / f"{name}.png").stat().st_size > 1000
        assert f"![{name}](figures/{name}.png)" in text and f"--only {name}" in text
        assert (root / "docs" / "figures" / f"{name}.txt").read_text().strip() in text
