"""Result files: resumable rows, problem fingerprints, pruning of stale rows, atomic writes."""

import json

import numpy as np

from oblr_theory.problems import SoftmaxBandit
from oblr_theory.results import ResultStore, atomic_write_text, problem_fingerprint


def test_store_resumes_and_prunes(tmp_path):
    path = str(tmp_path / "rows.jsonl")
    store = ResultStore(path)
    store.add([dict(key="a", family="f", setting="old", x=np.float64(1.0)),
               dict(key="b", family="f", setting="new"), dict(key="c", family="g", setting="old")])
    store.add([dict(key="a", family="f", setting="old")])  # duplicate key: ignored
    again = ResultStore(path)
    assert [r["key"] for r in again.rows] == ["a", "b", "c"] and again.done("a")
    assert again.prune_family("f", "new") == 1
    assert [r["key"] for r in ResultStore(path).rows] == ["b", "c"]


def test_fingerprint_changes_with_the_problem_and_settings():
    b = SoftmaxBandit([0.0, 1.0], [1.0, 0.0])
    fp = problem_fingerprint(b, 8)
    assert fp == problem_fingerprint(SoftmaxBandit([0.0, 1.0], [1.0, 0.0]), 8)
    assert fp != problem_fingerprint(b, 4)
    assert fp != problem_fingerprint(SoftmaxBandit([0.0, 1.0], [0.5, 0.0]), 8)
    assert fp != problem_fingerprint(b.with_theta(np.array([0.0, 2.0])), 8)


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "sub" / "report.json"
    atomic_write_text(str(path), json.dumps({"ok": True}))
    assert json.loads(path.read_text()) == {"ok": True}
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]
