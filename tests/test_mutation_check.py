"""experiments/mutation_check.py: every mutant applies cleanly, and verify catches one of them."""

import os
import subprocess
import sys

import pytest
from scripts import load_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def mutation_check():
    return load_script("experiments/mutation_check.py", "mutation_check")


def test_every_mutant_target_occurs_exactly_once(mutation_check):
    mutants = mutation_check.MUTANTS
    assert len(mutants) >= 30 and len({m.id for m in mutants}) == len(mutants)
    areas = {m.path.split("/")[-1] for m in mutants}
    for module in ("estimators.py", "exact.py", "theory.py", "snr.py", "stats.py", "sequences.py", "step.py"):
        assert module in areas
    for m in mutants:
        with open(os.path.join(ROOT, m.path), encoding="utf-8") as f:
            text = f.read()
        assert text.count(m.old) == 1, m.id
        assert m.old != m.new, m.id
        assert m.verify or m.tests, f"{m.id} has no check"


def test_apply_refuses_an_ambiguous_or_missing_target(mutation_check, tmp_path):
    (tmp_path / "a.py").write_text("x = 1\nx = 1\n")
    bad = mutation_check.Mutant("dup", "a.py", "x = 1", "x = 2", "ambiguous")
    with pytest.raises(ValueError, match="occurs 2 times"):
        mutation_check.apply(str(tmp_path), bad)
    with pytest.raises(ValueError, match="occurs 0 times"):
        mutation_check.apply(str(tmp_path), mutation_check.Mutant("none", "a.py", "y", "z", "missing"))


_REGISTRY_ROWS = """
import sys
import numpy as np
from oblr_theory.verify import claims_definitions
from oblr_theory.verify.report import Context
rows = claims_definitions.claims(True, 0)[0].run(Context(np.random.default_rng(0), 1e-6, 0.99, True))
failed = [r.statement for r in rows if not r.passed]
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def _registry_rows(root):
    """The DEF layer's registry claim (the first claim of ``verify``'s DEF module) on the copy at
    ``root``, in a fresh interpreter that imports the copy."""
    env = dict(os.environ, PYTHONPATH=root, PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([sys.executable, "-c", _REGISTRY_ROWS], cwd=root, env=env, capture_output=True, text=True,
                          timeout=600)


def test_a_fallback_mutant_is_caught_and_the_unmutated_copy_passes(mutation_check, tmp_path):
    root = str(tmp_path)
    mutation_check.copy_tree(root)
    clean = _registry_rows(root)
    assert clean.returncode == 0, clean.stdout[-2000:] + clean.stderr[-2000:]
    mutant = next(m for m in mutation_check.MUTANTS if m.id == "est-fallback-zero")
    mutation_check.apply(root, mutant)
    caught = _registry_rows(root)
    assert caught.returncode == 1, caught.stderr[-2000:]
    assert "optimal_loo" in caught.stdout and "opo" in caught.stdout
