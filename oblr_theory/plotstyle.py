"""The one figure style of the package: colours, markers, sizes, ticks, legends, saving.

Colours are Paul Tol's colour-blind-safe *muted* scheme (https://personal.sron.nl/~pault/), plus
greys and black; each estimator (and each OBLR-PO method of ``experiments/comparison.py``) has
ONE colour and ONE marker, the same in every figure, and no two names share both. Sizes are for a
two-column paper: :data:`SINGLE` (one column, 3.4 in) and :data:`DOUBLE` (full width, 7.0 in),
8 pt text. :func:`save` writes a vector PDF, a PNG and the caption beside them (``stem.txt``).

Import matplotlib through this module (it selects the non-interactive Agg backend).
"""

from __future__ import annotations

import os
import textwrap
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

__all__ = ["SINGLE", "DOUBLE", "STYLE", "ESTIMATOR_STYLE", "RULE_STYLE", "style", "color", "marker",
           "figure", "integer_ticks", "legend_below", "legend_right", "na_note", "save", "plt",
           "PAPER_DPI", "DOCS_DPI"]

#: Figure widths in inches: one column and the full text width of a two-column paper.
SINGLE, DOUBLE = 3.4, 7.0
#: PNG resolution for the paper and for the documentation gallery (docs/figures/).
PAPER_DPI, DOCS_DPI = 300, 140

#: Paul Tol's muted scheme (colour-blind safe), by name.
TOL = dict(indigo="#332288", cyan="#88CCEE", teal="#44AA99", green="#117733", olive="#999933",
           sand="#DDCC77", rose="#CC6677", wine="#882255", purple="#AA4499", grey="#777777",
           black="#000000")


@dataclass(frozen=True)
class Style:
    """How one name is drawn: colour, marker, line style, line width."""

    color: str
    marker: str
    ls: str = "-"
    lw: float = 1.2

    def kw(self, markevery=None) -> dict:
        """Keyword arguments for ``Axes.plot``."""
        kw = dict(color=self.color, marker=self.marker, ls=self.ls, lw=self.lw, ms=4)
        if markevery is not None:
            kw["markevery"] = markevery
        return kw


#: One style per estimator (docs/theory.md, "The estimators") and per method of the comparison; OBLR-PO
#: (optimal_loo baseline + SNR step) is drawn thick.
ESTIMATOR_STYLE = {
    "reinforce": Style(TOL["grey"], "o"),
    "constant": Style(TOL["grey"], "x", "--"),
    "rloo": Style(TOL["indigo"], "o"),
    "grpo": Style(TOL["rose"], "s"),
    "dr_grpo": Style(TOL["wine"], "D"),
    "opo": Style(TOL["sand"], "^"),
    "opo_loo": Style(TOL["olive"], "v", "--"),
    "optimal": Style(TOL["cyan"], "<", "--"),
    "optimal_loo": Style(TOL["teal"], ">"),
    "optimal_loo_shrink": Style(TOL["green"], "P"),
    "oracle_optimal": Style(TOL["black"], "*", "-", 1.6),
    "logit_loo": Style(TOL["purple"], "h"),
    "optimal_loo_logit": Style(TOL["teal"], "h", "--"),
    "λ*": Style(TOL["purple"], "d", "-."),
    "rloo+snr": Style(TOL["indigo"], "X", "--"),
    "oblr_po": Style(TOL["teal"], "p", "-", 2.2),
    "oblr_po_shrink": Style(TOL["green"], "H", "-", 2.2),
    "rloo+local": Style(TOL["indigo"], "*", ":"),
    "oblr_po_local": Style(TOL["teal"], "*", ":", 2.2),
    "rloo+local_exact": Style(TOL["grey"], "*", ":"),
    "rloo+adam": Style(TOL["rose"], "o", "-."),
    "rloo+adam_snr": Style(TOL["wine"], "X", "-."),
}
#: The learning-rate rules of the SNR traces (Tol's bright blue / red / green).
RULE_STYLE = {
    "constant": Style("#4477AA", "o"),
    "oracle": Style("#000000", "s"),
    "snr": Style("#228833", "^"),
}
#: rcParams of every figure: 8 pt text, thin spines, no top/right spines, tight legends.
STYLE = {
    "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7,
    "legend.fontsize": 7, "legend.frameon": False, "axes.spines.top": False, "axes.spines.right": False,
    "axes.linewidth": 0.6, "lines.linewidth": 1.2, "savefig.bbox": "tight", "savefig.pad_inches": 0.03,
    "pdf.fonttype": 42, "figure.constrained_layout.use": True,
}


def style(name: str) -> Style:
    """The style of an estimator or method name; an unknown name is an error (add it above)."""
    try:
        return ESTIMATOR_STYLE[name]
    except KeyError:
        raise KeyError(f"no plot style for {name!r}: add it to oblr_theory.plotstyle.ESTIMATOR_STYLE") from None


def color(name: str) -> str:
    return style(name).color


def marker(name: str) -> str:
    return style(name).marker


def figure(width: float = DOUBLE, height: float = 2.6, nrows: int = 1, ncols: int = 1, **kw):
    """A figure at a paper width (:data:`SINGLE` or :data:`DOUBLE`) in the package style, with a
    constrained layout (no overlapping labels); returns ``(fig, axes)`` (axes always 2-D)."""
    if width not in (SINGLE, DOUBLE):
        raise ValueError(f"width must be SINGLE ({SINGLE}) or DOUBLE ({DOUBLE}) inches, got {width!r}")
    plt.rcParams.update(STYLE)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), squeeze=False, **kw)
    fig.set_layout_engine("constrained", h_pad=0.04, w_pad=0.04)
    return fig, axes


def integer_ticks(ax, axis: str = "x", values=None) -> None:
    """Integer-only ticks on an axis whose quantity is an integer (G, steps): at ``values`` (the
    integers drawn, when there are few) or from an integer locator."""
    target = getattr(ax, f"{axis}axis")
    if values is not None and len(set(values)) <= 8:
        target.set_ticks(sorted({int(v) for v in values}))
    else:
        target.set_major_locator(MaxNLocator(integer=True))


def legend_below(fig, handles, labels, ncol: int = 4, **kw):
    """One legend for the whole figure, below the axes (outside every data area)."""
    return fig.legend(handles, labels, loc="outside lower center", ncol=ncol, **kw)


def legend_right(fig, handles, labels, **kw):
    """One legend for the whole figure, right of the axes (outside every data area)."""
    return fig.legend(handles, labels, loc="outside right center", ncol=1, **kw)


def na_note(ax, x, y, reason: str | None = None, **kw):
    """Mark an undefined value as "n/a" at ``(x, y)`` (data x, axes-fraction y), never a zero."""
    ax.annotate("n/a", (x, y), xycoords=("data", "axes fraction"), ha="center", va="bottom",
                fontsize=6.5, color="#555555", **kw)
    return reason


def wrap(text: str, width: int = 110) -> str:
    """A caption wrapped for a text file."""
    return "\n\n".join(textwrap.fill(p, width) for p in text.strip().split("\n\n"))


def save(fig, figures_dir: str, stem: str, caption: str = "", dpi: int = PAPER_DPI,
         formats=("png", "pdf")) -> list[str]:
    """Write ``stem.png`` at ``dpi``, ``stem.pdf`` (vector) and, when given, the caption as
    ``stem.txt``; returns the written paths. Closes the figure."""
    os.makedirs(figures_dir, exist_ok=True)
    paths = []
    for ext in formats:
        p = os.path.join(figures_dir, f"{stem}.{ext}")
        fig.savefig(p, dpi=dpi, bbox_inches="tight", pad_inches=0.03)
        paths.append(p)
    if caption:
        p = os.path.join(figures_dir, f"{stem}.txt")
        with open(p, "w") as fh:
            fh.write(wrap(caption) + "\n")
        paths.append(p)
    plt.close(fig)
    return paths
