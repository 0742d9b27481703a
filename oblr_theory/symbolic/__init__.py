"""Symbolic (sympy) derivations of the closed forms of T1-T8, each with a printable proof trace.

    from oblr_theory.symbolic import derive, LABELS
    derive("T2")                      # prints the trace, returns True iff every check passed

Command line: ``oblr-theory derive T2`` or ``python -m oblr_theory.symbolic T2`` (``all`` runs
every label; ``--full`` also runs the slow full enumerations).

Routes (none re-types its target; each target is checked against the derived expression):

* T1, T2: i.i.d. moment algebra with G symbolic (:mod:`.variance`), and exact enumeration of a
  softmax bandit with symbolic logits and rewards, K = 2, 3 and G = 2, 3, 4 (:mod:`.enumeration`);
  the batch formula and T7 by the same algebra over prompt groups.
* T3: ``b*`` as the root of ``dV/db`` for general G (:mod:`.baseline`) and on the bandits.
* T4-T6: expectation of the L-smoothness inequality, maximised over eta (:mod:`.stepsize`).
* T8: differentiated log-softmax and an enumerated two-token model (:mod:`.tokens`).
* SMOOTH: the bandit Hessian and ``||H||_2 <= 5/2 (max r - min r)`` on a grid (:mod:`.smoothness`).
"""
from __future__ import annotations

import argparse
import sys

from .trace import ProofTrace

__all__ = ["LABELS", "derive", "main"]

LABELS = ("T1", "T2", "T3", "T4", "T5", "T6", "T7", "T8", "SMOOTH")


def _steps(label: str, full: bool):
    from . import baseline, enumeration, smoothness, stepsize, tokens, variance
    return {
        "T1": [("T1 unbiasedness: general G by moment algebra", variance.derive_t1_general),
               ("T1 unbiasedness and bias on symbolic softmax bandits",
                lambda t: enumeration.derive_t1_bandit(t, full=full))],
        "T2": [("T2 exact variance: general G by moment algebra", variance.derive_t2_general),
               ("T2 batch of B prompts: law of total variance", variance.derive_batch),
               ("T2 exact variance on symbolic softmax bandits", enumeration.derive_t2_bandit)],
        "T3": [("T3 optimal baseline: general G", baseline.derive_t3_general),
               ("T3 optimal baseline on symbolic softmax bandits", enumeration.derive_t3_bandit)],
        "T4": [("T4 one-step bound from L-smoothness", stepsize.derive_t4)],
        "T5": [("T5 optimal step size and guaranteed gain", stepsize.derive_t5)],
        "T6": [("T6 convergence bounds", stepsize.derive_t6)],
        "T7": [("T7 unbiased SNR pieces: B symbolic", variance.derive_t7)],
        "T8": [("T8 logit proxy and martingale orthogonality", tokens.derive_t8)],
        "SMOOTH": [("Softmax-bandit smoothness (the L of T4-T6)", smoothness.derive_smoothness)],
    }[label]


def derive(label: str, out=None, full: bool = False) -> bool:
    """Run the derivations of ``label`` (one of :data:`LABELS`, or ``"all"``), print their proof
    traces to ``out`` (stdout by default), and return True iff every check passed."""
    out = sys.stdout if out is None else out
    key = str(label).upper()
    if key == "ALL":
        return all([derive(lab, out, full) for lab in LABELS])
    if key not in LABELS:
        raise ValueError(f"unknown label={label!r}; choose from {', '.join(LABELS)} or 'all'")
    ok = True
    for title, fn in _steps(key, full):
        trace = ProofTrace(title)
        fn(trace)
        trace.print(out)
        ok = ok and trace.ok
    return ok


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="oblr-theory derive",
                                     description="Print a symbolic derivation (proof trace) of a theorem.")
    parser.add_argument("label", help=f"one of {', '.join(LABELS)}, or 'all'")
    parser.add_argument("--full", action="store_true",
                        help="full multiset enumeration everywhere (slower: K=3, G=4 ratio estimators)")
    args = parser.parse_args(argv)
    if args.label.upper() not in (*LABELS, "ALL"):  # refused before any work; exit 2
        parser.error(f"unknown label {args.label!r}; choose from {', '.join(LABELS)} or 'all'")
    ok = derive(args.label, full=args.full)
    print("ALL CHECKS PASSED" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1
