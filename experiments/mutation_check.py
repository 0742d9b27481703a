"""Mutation check: does verification catch plausible bugs?

    python experiments/mutation_check.py [--only ID,ID] [--list] [--json PATH] [--timeout S]

Each mutant is one source-text replacement (a wrong divisor, eps inside instead of outside the
sqrt, a dropped term, a fallback returning 0, the batch SNR where the EMA belongs, ...). Mutants
are applied one at a time to a temporary copy of the package (``oblr_theory/``, ``tests/``,
``pyproject.toml``), never to this checkout, and each is checked by

* ``oblr-theory verify --quick`` (core mutants): caught when it exits non-zero. To save time the
  deterministic layer runs first, ``verify --quick --only DEF``: its rows are exact comparisons
  that do not depend on the seed, on ``α`` or on which other claims run, so a DEF failure is a
  failure of the full ``verify --quick`` as well; only a mutant that passes it gets the full run;
* a focused subset of the default tests (bridge mutants, which ``verify`` does not cover, and a
  core mutant's named tests when ``verify`` misses it): caught when pytest fails.

Before any mutant, the same checks run on the unmutated copy and must pass; otherwise every
mutant would be "caught" for nothing and the script exits 2. Prints one JSON object: the score
(caught / total), the survivors and one row per mutant. ``docs/mutation.md`` reports the score.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COPIED = ("oblr_theory", "tests", "pyproject.toml")

VERIFY = ("verify",)
#: the bridge tests that check the update's arithmetic against per-sample references (fast, torch)
BRIDGE_STEP = ("tests/bridge/test_surrogate.py",
               "tests/bridge/test_step.py::test_surrogate_gradient_is_weighted_sum_of_per_sample_scores",
               "tests/bridge/test_step.py::test_step_snr_pieces_equal_pieces_from_per_group_gradients",
               "tests/bridge/test_step.py::test_snr_learning_rate_shrinks_when_noise_grows",
               "tests/bridge/test_step.py::test_step_advantages_equal_numpy_registry")
BRIDGE_GRAM = ("tests/per_sample/test_ghost_pass.py::test_ghost_equals_loop",)


@dataclass(frozen=True)
class Mutant:
    """One plausible bug: replace ``old`` (which must occur exactly once) by ``new`` in ``path``.

    ``tests``: pytest node ids run when ``verify`` is not the check (bridge) or misses the mutant.
    """

    id: str
    path: str
    old: str
    new: str
    what: str
    verify: bool = True
    tests: tuple = ()


E, X, T, S, ST, SEQ, MC, OS, DY = ("oblr_theory/estimators.py", "oblr_theory/exact.py", "oblr_theory/theory.py",
                                   "oblr_theory/snr.py", "oblr_theory/stats.py", "oblr_theory/sequences.py",
                                   "oblr_theory/montecarlo.py", "oblr_theory/onestep.py", "oblr_theory/dynamics.py")
SUR, STEP, LIN = "oblr_theory/bridge/surrogate.py", "oblr_theory/bridge/step.py", "oblr_theory/per_sample/rules/linear.py"
TRLM, TRLP, TRLT = ("oblr_theory/integrations/_trl_math.py", "oblr_theory/integrations/_trl_pass.py",
                    "oblr_theory/integrations/trl.py")
PROBE = "oblr_theory/integrations/rlvr_probe.py"
#: the probes' exactness tests (objective, T2's affine closed forms, the trainer's step)
PROBE_TESTS = ("tests/integrations/test_rlvr_probe.py::test_closed_form_affine_matches_prompt_variance",
               "tests/integrations/test_rlvr_probe.py::test_step_scale_is_trls_dapo_step_with_clipping",
               "tests/integrations/test_rlvr_probe.py::test_pool_objective_is_the_exact_gradient")
#: the TRL integration's tests of the single-pass update and the local rule against TRL
TRL_UPDATE = ("tests/integrations/test_trl.py::test_single_pass_update_equals_grpotrainer",
              "tests/integrations/test_trl.py::test_local_rule_records_the_step_it_took",
              "tests/integrations/test_trl_pass.py")

MUTANTS = (
    # ---- estimators: weights, divisors, eps placement, fallbacks, aggregation
    Mutant("est-grpo-ddof", E, "_ops.sum_keep(centred * centred) / (G - ddof))", "_ops.sum_keep(centred * centred) / G)",
           "grpo ignores ddof (always the population std)"),
    Mutant("est-grpo-eps-inside", E, "/ (G - ddof))\n    den = std + eps", "/ (G - ddof) + eps)\n    den = std",
           "grpo: eps inside the sqrt instead of added to the std"),
    Mutant("est-loo-divisor", E, "return _ops.loo_sum(r) / (r.shape[-1] - 1)", "return _ops.loo_sum(r) / r.shape[-1]",
           "leave-one-out mean divides by G instead of G - 1"),
    Mutant("est-drgrpo-divisor", E, "return r - _ops.sum_keep(r) / r.shape[-1]\n",
           "return r - _ops.sum_keep(r) / (r.shape[-1] - 1)\n", "dr_grpo group mean divides by G - 1"),
    Mutant("est-fallback-zero", E, "_ops.where(ok, num / safe_den, fallback + 0 * num)", "_ops.where(ok, num / safe_den, 0 * num)",
           "zero-weight fallback returns baseline 0 instead of the (leave-one-out) mean"),
    Mutant("est-fallback-inclusive-divisor", E, "w[..., None, :], _ops.sum_keep(r) / r.shape[-1]",
           "w[..., None, :], _ops.sum_keep(r) / (r.shape[-1] - 1)", "inclusive fallback mean divides by G - 1"),
    Mutant("est-loo-keeps-self", E, "w_gk, fallback = _ops.loo_rows(w), _loo_mean(r)",
           "w_gk, fallback = w[..., None, :] + 0 * _ops.loo_rows(w), _loo_mean(r)",
           "leave-one-out weighted baseline keeps the response's own weight"),
    Mutant("est-token-mean-no-G", E, "return adv * (lengths.shape[-1] / total)", "return adv / total",
           "token-mean aggregation forgets the factor G"),
    Mutant("est-seq-mean-token-mean", E, "return adv / lengths\n", "return adv / _ops.sum_keep(lengths)\n",
           "seq-mean-token-mean divides by the group's total length"),
    Mutant("est-constant-agg", E, "return adv / max_length\n", "return adv / (max_length * adv.shape[-1])\n",
           "constant aggregation divides by G·C instead of C"),
    Mutant("est-shrink-target", E, "(1 - lam) * _loo_mean(r))", "(1 - lam) * _ops.sum_keep(r) / r.shape[-1])",
           "optimal_loo_shrink shrinks towards the inclusive mean"),
    # ---- exact engine
    Mutant("exact-multinomial", X, "return gammaln(G + 1) - log_fact + log_p", "return gammaln(G + 1) + log_p",
           "multiset weights miss the 1/Π c_i! of the multinomial coefficient"),
    Mutant("exact-batch-between", X, "float(p @ (prompt_var + between)) / batch_size", "float(p @ prompt_var) / batch_size",
           "batch variance drops the between-prompt term"),
    Mutant("exact-m_rS-product", X, "mu, m_S, m_rS = p @ r, p @ S, p @ (r * S)", "mu, m_S, m_rS = p @ r, p @ S, (p @ r) * (p @ S)",
           "E[rS] computed as E[r]·E[S] (b* becomes μ)"),
    Mutant("exact-dev-sign", X, "/ G + mm  # ||ĝ(c) − m||²", "/ G - mm  # ||ĝ(c) − m||²",
           "||ĝ − m||² expansion with the wrong sign of ||m||²"),
    Mutant("exact-coef-no-G", X, "A).reshape(-1) / G)", "A).reshape(-1))", "E ĝ accumulated without the 1/G"),
    # ---- closed forms and bounds
    Mutant("theory-rloo-var", T, "(G - 2) / (G * (G - 1)) * gsq", "(G - 2) / (G * G) * gsq",
           "V_rloo's ||g||² term with G² instead of G(G-1)"),
    Mutant("theory-bound-no-msq", T, "0.5 * L * eta * eta * (m @ m + V)", "0.5 * L * eta * eta * V",
           "T4 bound drops ||m||² from the curvature term"),
    Mutant("theory-bound-loose", T, "return _out(J + eta * (g @ m) - 0.5 * L", "return _out(J + eta * (g @ m) - 1.0 * L",
           "T4 bound twice as loose (L η² instead of L η²/2)"),
    Mutant("theory-eta-star-2L", T, "return _out(gm / (L * den))", "return _out(gm / (2 * L * den))",
           "T5 η* with 2L"),
    Mutant("theory-snr-step-2L", T, "    return _out(frac / L)\n", "    return _out(frac / (2 * L))\n",
           "T5 SNR step size (1/2L) SNR/(1+SNR)"),
    Mutant("theory-t6-half-noise", T, "+ L * eta * s2)", "+ L * eta * s2 / 2)", "T6 constant-step bound halves the noise term"),
    Mutant("theory-excess-no-G", T, "return _out(cov * cov / (G * m_S))", "return _out(cov * cov / m_S)",
           "T3 excess variance without 1/G"),
    Mutant("theory-gap-G-1", T, "return _out(m_S * d * d / G)", "return _out(m_S * d * d / max(G - 1, 1))",
           "T3 variance gap with G - 1"),
    # ---- SNR and learning-rate rules
    Mutant("snr-sigma-divisor", S, "(trace - B * mean_sq) / (B - 1))", "(trace - B * mean_sq) / B)",
           "T7 Σ̂ divides by B instead of B - 1"),
    Mutant("snr-noise-no-B", S, "noise_var = trace_cov / B  # V̂", "noise_var = trace_cov  # V̂", "T7 V̂ = Σ̂ (forgets /B)"),
    Mutant("snr-ema-weight", S, "else beta * prev + (1 - beta) * x", "else beta * prev + x", "EMA update misses (1 - β)"),
    Mutant("snr-ema-no-correction", S, "return self.den / (1 - self.beta**self.steps)", "return self.den",
           "EMA denominator without bias correction"),
    Mutant("snr-lr-floor-3x", S, "_ops.where(eta < eta_min,", "_ops.where(eta < 3 * eta_min,",
           "snr_lr floor threshold 3x too high"),
    Mutant("dyn-batch-snr", DY, "snr_t = ema.update(snr.snr_pieces(u))",
           "ema.update(snr.snr_pieces(u)); snr_t = snr.snr_hat(snr.snr_pieces(u))",
           "dynamics: learning rate from the batch SNR instead of the EMA"),
    Mutant("dyn-ghat-sum", DY, "ghat = u.mean(axis=1)", "ghat = u.sum(axis=1)", "dynamics: batch gradient summed over groups"),
    # ---- statistics
    Mutant("stats-merge-shift", ST, "self.m2 = self.m2 + m2_b + delta**2 * (n_a * n_b / n)", "self.m2 = self.m2 + m2_b",
           "streaming merge drops the shift term of M2", tests=("tests/test_stats.py",)),
    Mutant("stats-bonferroni", ST, "q = alpha / (2.0 * num_comparisons)", "q = alpha / 2.0",
           "z threshold ignores the number of comparisons",
           tests=("tests/test_stats.py",)),
    Mutant("stats-var-se", ST, "se = float(np.sqrt(moments.dev.var[0] / n))", "se = float(np.sqrt(moments.dev.var[0] / n) * 4)",
           "variance test's standard error 4x too large (test loses power)"),
    # ---- sampler, sequences, one-step laws
    Mutant("mc-group-layout", MC, "prompts_n = np.repeat(prompts_b, G)", "prompts_n = np.tile(prompts_b, G)",
           "groups interleaved: a group mixes prompts"),
    Mutant("mc-no-1/G", MC, 'np.einsum("bg,bgd->bd", A_bg, sample.scores) / sample.group_size',
           'np.einsum("bg,bgd->bd", A_bg, sample.scores)', "sampled group estimate without 1/G"),
    Mutant("seq-proxy-2", SEQ, "terms_3vc[1] = 1.0 - 2.0 * pi_vc + pi_sq_c", "terms_3vc[1] = 1.0 - pi_vc + pi_sq_c",
           "logit proxy ||e_y − π||² without the 2"),
    Mutant("seq-diag-tables", SEQ, "len(problem.tables) * proxy, proxy,", "proxy, proxy,",
           "Σ_t ||s_t||² forgets the number of parameter tables"),
    Mutant("onestep-batch-sum", OS, "law.values[idx].mean(axis=1))", "law.values[idx].sum(axis=1))",
           "batch law sums instead of averaging the units"),
    Mutant("onestep-prompt-weight", OS, "weights.append(problem.prompt_probs[x] * w)", "weights.append(w)",
           "unit law forgets the prompt probability"),
    # ---- torch bridge (checked by the bridge tests)
    Mutant("bridge-surrogate-B", SUR, "* seq_logp_bg).sum() / (B * G)", "* seq_logp_bg).sum() / B",
           "surrogate loss divides by B instead of B·G", verify=False, tests=BRIDGE_STEP),
    Mutant("bridge-group-norm-G", SUR, 'torch.einsum("bi,bij,bj->b", A, gram_bgg, A) / G**2',
           'torch.einsum("bi,bij,bj->b", A, gram_bgg, A) / G', "||u_b||² = AᵀKA/G instead of /G²",
           verify=False, tests=BRIDGE_STEP),
    Mutant("bridge-lr-batch-snr", STEP, "lr = float(snr_lr(np.float64(snr_ema),", "lr = float(snr_lr(np.float64(snr_batch),",
           "bridge: learning rate from the batch SNR instead of the EMA", verify=False, tests=BRIDGE_STEP),
    Mutant("bridge-single-pass-B", STEP, "group_sq_sum = B**2 * torch.diagonal(K_bb).sum()",
           "group_sq_sum = B * torch.diagonal(K_bb).sum()", "bridge single pass: Σ_b ||u_b||² = B tr K",
           verify=False, tests=BRIDGE_STEP),
    Mutant("bridge-bias-mean", LIN, "return b_bgto.sum(dim=2)", "return b_bgto.mean(dim=2)",
           "ghost bias gradient averaged over tokens instead of summed", verify=False, tests=BRIDGE_GRAM),
    # ---- TRL integration (checked by its tests against GRPOTrainer)
    Mutant("trl-dapo-scale", TRLM, "        return 1.0 / n_tokens", "        return 1.0 / n_sequences",
           "TRL single pass: dapo's gradient over the completions instead of the tokens",
           verify=False, tests=TRL_UPDATE),
    Mutant("trl-pass-temperature", TRLP, "keep_factors=True, diagonal_only=True, temperature=temperature)",
           "keep_factors=True, diagonal_only=True)", "TRL pass: scores of softmax(z), not softmax(z/τ)",
           verify=False, tests=TRL_UPDATE),
    Mutant("trl-local-clip", TRLT, "self.oblrpo_local.stepped(eta * min(rho, 1.0))",
           "self.oblrpo_local.stepped(eta)", "T5-local: the recorded step ignores gradient clipping",
           verify=False, tests=TRL_UPDATE),
    # ---- probes of theory along training (checked by their exactness tests)
    Mutant("probe-affine-m_S", PROBE, "    v1 = np.asarray(theory.prompt_variance(mom(mu * S + 1.0), label, G), float)",
           "    v1 = np.asarray(theory.prompt_variance(mom(mu * S), label, G), float)",
           "T2 plug-in: the closed form's m_S term dropped (V_x taken at m_S = J S*)", verify=False, tests=PROBE_TESTS),
    Mutant("probe-clip", PROBE, "        clip = min(1.0, max_grad_norm / (c * g_hat_norm + CLIP_EPS))",
           "        clip = min(1.0, max_grad_norm / (g_hat_norm + CLIP_EPS))",
           "T4 probe: the clipping norm taken on ĝ, not on TRL's scaled loss gradient", verify=False,
           tests=PROBE_TESTS),
    Mutant("probe-grad-sum", PROBE, "        J = J_x.mean()", "        J = J_x.sum()",
           "exact objective: ∇J of the pool's sum instead of its mean", verify=False, tests=PROBE_TESTS),
)



# ---------------------------------------------------------------------------------------------


def apply(root: str, mutant: Mutant) -> str:
    """Apply ``mutant`` under ``root``; returns the original text. ``old`` must occur exactly once."""
    path = os.path.join(root, mutant.path)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    n = text.count(mutant.old)
    if n != 1:
        raise ValueError(f"mutant {mutant.id}: target occurs {n} times in {mutant.path} (need exactly 1)")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text.replace(mutant.old, mutant.new))
    return text


def copy_tree(dest: str) -> None:
    for name in COPIED:
        src = os.path.join(ROOT, name)
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(dest, name), ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, os.path.join(dest, name))


def _run(cmd, cwd, timeout):
    env = dict(os.environ, PYTHONPATH=cwd, PYTHONDONTWRITEBYTECODE="1")
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
        return p.returncode, time.perf_counter() - t0, (p.stdout + p.stderr)[-1500:]
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - t0, ""


def verify_cmd(jobs: int, only: str | None = None):
    return [sys.executable, "-m", "oblr_theory.cli", "verify", "--quick", "--no-progress", "--jobs", str(jobs)] + (
        ["--only", only] if only else [])


def tests_cmd(tests):
    return [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]


def check(root: str, mutant: Mutant, jobs: int, timeout: float) -> dict:
    """Run the mutant's checks in ``root`` (already mutated): verify first, then its tests."""
    out = {"caught_by": None, "verify_rc": None, "tests_rc": None, "seconds": 0.0, "tail": ""}
    if mutant.verify:
        for stage, only in (("verify --only DEF", "DEF"), ("verify", None)):
            rc, sec, tail = _run(verify_cmd(1 if only else jobs, only), root, timeout)
            out.update(verify_rc=rc, seconds=out["seconds"] + sec)
            if rc != 0:
                out.update(caught_by=stage, tail=_failed_lines(tail))
                return out
    if mutant.tests:
        rc, sec, tail = _run(tests_cmd(mutant.tests), root, timeout)
        out.update(tests_rc=rc, seconds=out["seconds"] + sec)
        if rc != 0:
            out.update(caught_by="tests", tail=tail[-600:])
    return out


def _failed_lines(tail: str) -> str:
    """The report's FAILED block (what verify said was wrong), shortened."""
    i = tail.find("FAILED:")
    return tail[i:i + 600] if i >= 0 else tail[-600:]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", help="comma-separated mutant ids")
    p.add_argument("--list", action="store_true", help="list the mutants and exit")
    p.add_argument("--json", metavar="PATH", help="also write the JSON here")
    p.add_argument("--jobs", type=int, default=2, help="verify worker processes")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per check (a timeout counts as missed)")
    args = p.parse_args(argv)
    mutants = MUTANTS
    if args.only:
        want = {s.strip() for s in args.only.split(",")}
        unknown = want - {m.id for m in MUTANTS}
        if unknown:
            print(f"mutation_check: unknown mutant id(s) {sorted(unknown)}", file=sys.stderr)
            return 2
        mutants = tuple(m for m in MUTANTS if m.id in want)
    if args.list:
        for m in mutants:
            print(f"{m.id:<32} {m.path:<34} {m.what}")
        return 0
    revision = _git_revision()  # of the tree copied now (uncommitted changes included in the copy)
    with tempfile.TemporaryDirectory(prefix="oblr-mutants-") as root:
        copy_tree(root)
        for m in mutants:  # every target must exist exactly once before anything runs
            apply(root, m)
            shutil.copy2(os.path.join(ROOT, m.path), os.path.join(root, m.path))
        baseline = {}
        if any(m.verify for m in mutants):
            baseline["verify --only DEF"] = _run(verify_cmd(1, "DEF"), root, args.timeout)[:2]
            baseline["verify"] = _run(verify_cmd(args.jobs), root, args.timeout)[:2]
        for tests in sorted({m.tests for m in mutants if m.tests}):
            baseline[" ".join(tests)] = _run(tests_cmd(tests), root, args.timeout)[:2]
        if any(rc != 0 for rc, _ in baseline.values()):
            print(json.dumps({"error": "the unmutated checks fail", "baseline": baseline}, indent=1))
            return 2
        results = []
        for m in mutants:
            original = apply(root, m)
            try:
                res = check(root, m, args.jobs, args.timeout)
            finally:
                with open(os.path.join(root, m.path), "w", encoding="utf-8") as f:
                    f.write(original)
            results.append({"id": m.id, "file": m.path, "what": m.what, **res})
            print(f"{m.id:<32} {'caught by ' + res['caught_by'] if res['caught_by'] else 'SURVIVED':<18} "
                  f"{res['seconds']:.0f} s", file=sys.stderr)
    caught = sum(r["caught_by"] is not None for r in results)
    report = {"score": caught / len(results), "caught": caught, "total": len(results),
              "survivors": [r["id"] for r in results if r["caught_by"] is None],
              "by_verify_def": sum(r["caught_by"] == "verify --only DEF" for r in results),
              "by_verify": sum(r["caught_by"] == "verify" for r in results),
              "by_tests": sum(r["caught_by"] == "tests" for r in results),
              "baseline": {k: {"rc": rc, "seconds": s} for k, (rc, s) in baseline.items()},
              "git_revision": revision, "mutants": results}
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0 if not report["survivors"] else 1


def _git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
