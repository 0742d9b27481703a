"""The README: every file it cites exists, its snippet prints what it says, and its list of built-in
rewards is the registry's."""

import inspect
import os
import re
import subprocess
import sys

from oblr_theory.problems import rewards

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()


def _cited_paths(text):
    """Markdown link targets (not URLs or anchors) and every path-like token with a file
    extension (``experiments/dynamics.py``, ``docs/theory.md``, a bare ``THEORY.md``)."""
    links = {t.split("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", text)
             if not t.startswith(("http://", "https://", "#"))}
    tokens = set(re.findall(r"(?<![\w./-])((?:[\w.-]+/)*[\w-]+\.(?:py|md|sh|toml|cfg|txt))\b", text))
    return sorted((links | tokens) - {""})


def test_cited_paths_exist():
    cited = _cited_paths(README)
    assert "docs/theory.md" in cited and "experiments/dynamics.py" in cited  # the scan sees paths
    missing = [p for p in cited if not os.path.exists(os.path.join(REPO, p))]
    assert not missing, f"README cites files that are not in the repo: {missing}"


def test_the_path_scan_catches_a_missing_file():
    """Negative control: the scan reports a bare file name and a link that do not exist."""
    cited = _cited_paths("see THEORY.md and [x](docs/nope.md#a) or `experiments/gone.py`")
    assert cited == ["THEORY.md", "docs/nope.md", "experiments/gone.py"]


def _block_after(text, marker, lang):
    start = text.index(marker)
    m = re.compile(rf"```{lang}\n(.*?)```", re.S).search(text, start)
    return m.group(1)


def test_snippet_runs_and_prints_what_the_readme_says():
    code = _block_after(README, "```python\nimport numpy as np", "python")
    expected = _block_after(README, "prints\n", "text")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n") == expected.split("\n")
    # the claim in the prose: the optimal baseline's benefit is visible (V well below rloo's)
    ratio = {line.split()[0]: float(line.split()[-1]) for line in expected.strip().splitlines()}
    assert ratio["optimal_loo"] < 0.5 and ratio["oracle_optimal"] < ratio["optimal_loo"]


def test_listed_rewards_are_the_registry():
    table = README[README.index("| reward | parameters |"):].split("\n\n")[0].splitlines()[2:]
    listed = {}
    for row in table:
        cells = [c.strip() for c in row.strip("|").split("|")]
        listed[cells[0].strip("`")] = re.findall(r"`(\w+)`", cells[1])
    registry = {name: list(inspect.signature(fn).parameters) for name, fn in rewards.BUILTIN.items()}
    assert listed == registry
