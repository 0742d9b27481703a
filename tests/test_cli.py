"""The command line refuses what would be a vacuous or lost run, and Ctrl-C ends every command
cleanly (exit 130, one line, finished rows kept)."""

import functools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from oblr_theory import cli, cliutil, figures, verify
from oblr_theory.verify.report import Claim, Row

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _usage_error(capsys, argv):
    """Run the CLI with ``argv``; it must exit 2 (argparse usage error). Returns stderr."""
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


@pytest.fixture
def no_run(monkeypatch):
    """Any attempt to run the suite or draw a figure fails the test: refusals come first."""
    def boom(*a, **k):
        raise AssertionError("the run started before the input was refused")

    monkeypatch.setattr(verify, "run_suite", boom)
    monkeypatch.setattr(figures, "_load", boom)


# --- verify --only -----------------------------------------------------------------------------


def test_only_with_a_label_matching_nothing_exits_2_and_lists_the_valid_ones(capsys, no_run):
    err = _usage_error(capsys, ["verify", "--only", "T9"])
    assert "'T9'" in err
    for label in verify.claim_labels(verify.collect_claims(False, 0)):
        assert label in err
    err = _usage_error(capsys, ["verify", "--only", "T1,T9"])  # one bad entry is enough
    assert "'T9'" in err and "'T1'" not in err.split("valid")[0]


def test_only_with_a_label_that_only_the_full_run_has(capsys, no_run):
    dropped_labels = {k.split("/")[0] for k in verify.quick_dropped()}
    full_only = sorted(set(verify.claim_labels(verify.collect_claims(False, 0)))
                       - set(verify.claim_labels(verify.collect_claims(True, 0))))
    assert full_only, "the quick run keeps every label; pick another case"
    err = _usage_error(capsys, ["verify", "--quick", "--only", full_only[0]])
    assert "without --quick" in err
    assert dropped_labels  # and --quick names what it drops (see test_quick_names_what_it_drops)


def _claim(key, label):
    return Claim(key, label, "toy", lambda ctx: [])


def test_valid_labels_come_from_the_collected_claims():
    """A new label (for example one another claim module adds) is valid without a code change."""
    claims = [_claim("defs/x", "DEF"), _claim("mc/y", "T1")]
    assert verify.claim_labels(claims) == ["DEF", "T1", "defs", "mc"]
    assert [c.key for c in verify.select_claims(claims, "DEF")] == ["defs/x"]
    assert [c.key for c in verify.select_claims(claims, "mc, defs")] == ["defs/x", "mc/y"]
    with pytest.raises(ValueError, match="'T9' match nothing.*DEF, T1, defs, mc"):
        verify.select_claims(claims, "T9")
    with pytest.raises(ValueError, match="names no claim"):
        verify.select_claims(claims, " , ")


def test_quick_names_what_it_drops():
    dropped = verify.quick_dropped(0)
    full = {c.key for c in verify.collect_claims(False, 0)}
    quick = {c.key for c in verify.collect_claims(True, 0)}
    assert dropped and set(dropped) == full - quick


# --- out-of-range options ----------------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["--alpha", "0"], ["--alpha", "1"], ["--alpha", "-0.1"], ["--alpha", "nan"], ["--alpha", "x"],
    ["--power", "1.5"], ["--power", "0"], ["--jobs", "0"], ["--jobs", "1.5"], ["--seed", "-1"],
])
def test_out_of_range_options_are_usage_errors(capsys, no_run, argv):
    err = _usage_error(capsys, ["verify", *argv])
    assert f"argument {argv[0]}" in err


def test_unwritable_json_path_is_refused_before_the_run(capsys, no_run, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("")
    err = _usage_error(capsys, ["verify", "--json", str(a_file / "r.json")])
    assert "--json" in err and "not a folder" in err
    err = _usage_error(capsys, ["verify", "--json", str(tmp_path)])
    assert "is a folder" in err


def test_writable_path_accepts_a_folder_still_to_be_created(tmp_path):
    assert cliutil.writable_path(str(tmp_path / "a" / "b" / "r.json")) is None
    assert not (tmp_path / "a").exists() and os.listdir(tmp_path) == []  # the check leaves nothing


def test_range_types():
    assert cliutil.int_range(1)("3") == 3
    assert cliutil.float_range(0, 1, hi_open=False)("1") == 1.0
    for parse, text in ((cliutil.int_range(1, 4), "5"), (cliutil.float_range(0, None), "0"),
                        (cliutil.float_range(None, None), "inf"), (cliutil.probability, "1")):
        with pytest.raises(Exception, match="expected"):
            parse(text)


def test_figures_and_derive_refuse_unknown_names(capsys, no_run, tmp_path):
    err = _usage_error(capsys, ["figures", "--only", "t4_bound,nope", "--results", str(tmp_path)])
    assert "'nope'" in err and "t4_bound" in err
    err = _usage_error(capsys, ["derive", "T9"])
    assert "'T9'" in err and "SMOOTH" in err


# --- Ctrl-C ------------------------------------------------------------------------------------

_CLAIMS = """
    import os, sys, time
    from oblr_theory.verify.report import Claim, Row

    def _fast(ctx):
        return [Row("T1", "fast claim", "toy", "exact", 1.0, 1.0, 0.0, 0.0, True)]

    def _slow(ctx):
        if os.environ.get("OBLR_TEST_RAISE"):
            raise KeyboardInterrupt
        print("slow claim started", flush=True)
        time.sleep(120)
        return []

    def claims(quick, seed):
        # claims run by decreasing cost: the slow one starts first (the fast one finishes in the
        # other worker meanwhile), except when it raises at once, where the fast one goes first
        cost = 0.5 if os.environ.get("OBLR_TEST_RAISE") else 5.0
        return [Claim("fast", "T1", "toy", _fast), Claim("slow", "T2", "toy", _slow, cost=cost)]
"""


@pytest.fixture
def fake_claims(tmp_path, monkeypatch):
    (tmp_path / "slow_claims.py").write_text(textwrap.dedent(_CLAIMS))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("slow_claims", None)
    return tmp_path


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_interrupted_verify_keeps_finished_rows(fake_claims, monkeypatch, capsys, jobs):
    """Ctrl-C raised inside a claim (in the main process, or in a worker): exit 130, one line, and
    the finished claim's row in the partial JSON."""
    monkeypatch.setenv("OBLR_TEST_RAISE", "1")
    monkeypatch.setattr(verify, "run_suite", functools.partial(verify.run_suite, modules=("slow_claims",)))
    path = fake_claims / "r.json"
    assert cli.main(["verify", "--no-progress", "--jobs", jobs, "--json", str(path)]) == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("oblr-theory verify: interrupted")
    rep = json.loads(path.read_text())
    assert rep["summary"]["interrupted"] and not rep["summary"]["passed"]
    keys = [r["key"] for r in rep["rows"]]
    assert keys == ["fast"] if jobs == "1" else set(keys) <= {"fast"}  # two workers: either may end first
    assert rep["summary"]["claims_total"] == 2


@pytest.mark.parametrize("whole_group", [True, False], ids=["terminal-ctrl-c", "sigint-to-main"])
def test_sigint_ends_verify_with_130_and_partial_json(fake_claims, whole_group):
    """A real SIGINT while a worker is busy: to the whole process group (what a terminal's Ctrl-C
    sends) or to the main process only (the busy worker must then be stopped, not waited for)."""
    path = fake_claims / "r.json"
    script = textwrap.dedent(f"""
        import functools, sys
        sys.path.insert(0, {str(fake_claims)!r})
        from oblr_theory import cli, verify
        verify.run_suite = functools.partial(verify.run_suite, modules=("slow_claims",))
        sys.exit(cli.main(["verify", "--no-progress", "--jobs", "2", "--json", {str(path)!r}]))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "slow claim started"
        time.sleep(0.5)  # let the fast claim finish in the other worker
        if whole_group:
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("oblr-theory verify: interrupted")
    rep = json.loads(path.read_text())
    assert rep["summary"]["interrupted"] and [r["key"] for r in rep["rows"]] == ["fast"]


@pytest.mark.parametrize("argv", [["figures", "--only", "t4_bound"], ["derive", "T2"]])
def test_ctrl_c_ends_other_commands_with_130(monkeypatch, capsys, tmp_path, argv):
    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(figures, "_load", interrupt)
    import oblr_theory.symbolic as symbolic

    monkeypatch.setattr(symbolic, "derive", interrupt)
    if argv[0] == "figures":
        argv = [*argv, "--results", str(tmp_path / "r"), "--figures", str(tmp_path / "f")]
    assert cli.main(argv) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"oblr-theory {argv[0]}: interrupted")
