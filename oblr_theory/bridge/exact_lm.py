"""The exact reference of the validation: every completion of a prompt enumerated on a small LM.

With short answers (``max_new_tokens ≤ 2``) and a small vocabulary, all completions of a prompt
can be scored at once: their probabilities, rewards, ``S`` and, from the exact Gram of all their
scores (``score_gram``), scores in isometric coordinates. On these outcomes the closed forms of
T2/T3 give the exact ``V_x`` from exact moments, and the multiset engine
(:func:`oblr_theory.exact.group_moments`) the exact ``V_x`` of any estimator, so the sampled
statistics of :mod:`oblr_theory.bridge.validate` are checked against exact ones.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import estimators, exact
from ..problems.base import Outcomes
from .gram import score_gram
from .validate import CLOSED_FORMS, ESTIMATORS, predicted_variance

__all__ = ["enumerate_completions", "exact_reference"]


def enumerate_completions(vocab_size: int, eos: int, horizon: int) -> list[list[int]]:
    """Every completion of at most ``horizon`` tokens: ending at the first ``eos``, or of length
    ``horizon`` without one (``Σ_{k<H} (V−1)^k + (V−1)^H`` sequences)."""
    others = [v for v in range(vocab_size) if v != eos]
    out, frontier = [], [[]]
    for k in range(horizon):
        nxt = []
        for pre in frontier:
            out.append(pre + [eos])
            nxt.extend(pre + [v] for v in others)
        frontier = nxt
    return out + frontier


def _lm_outcomes(model, tok, task, problem, horizon: int) -> Outcomes:
    """Exact outcomes of one prompt: probabilities, rewards, S, lengths, and scores in isometric
    coordinates (``K = U Λ Uᵀ``, scores ``U Λ^{1/2}``: every inner product exact)."""
    comps = enumerate_completions(tok.vocab_size, tok.eos_token_id, horizon)
    prompt = tok.encode(problem.prompt)
    P, n = len(prompt), len(comps)
    T = P + horizon
    ids = np.full((n, T), tok.pad_token_id)
    attn = np.zeros((n, T), bool)
    comp = np.zeros((n, T), bool)
    for i, c in enumerate(comps):
        ids[i, :P + len(c)] = prompt + c
        attn[i, :P + len(c)] = True
        comp[i, P:P + len(c)] = True
    dev = next(model.parameters()).device
    t = lambda a: torch.as_tensor(a, device=dev)[None]  # noqa: E731
    g = score_gram(model, t(ids), t(attn), t(comp), method="ghost")
    K = g.gram_bgg[0].double().cpu().numpy()
    logp = g.seq_logp_bg[0].double().cpu().numpy()
    lam, U = np.linalg.eigh((K + K.T) / 2)
    scores = U * np.sqrt(np.clip(lam, 0, None))
    rewards = task.rewards([[tok.decode(c) for c in comps]], [problem])[0]
    return Outcomes(probs=np.exp(logp), rewards=rewards, scores=scores, sq_norms=np.diag(K).copy(),
                    lengths=np.array([len(c) for c in comps], float), log_probs=logp)


def exact_reference(model, tok, task, problems, horizon: int, group_size: int,
                    max_multisets: int = 2_000_000, progress: bool = False) -> dict:
    """Exact per-prompt moments and one-group ``V_x`` (means over prompts), flat dict.

    ``V_exact/<e>``: closed forms on exact moments for reinforce/rloo/dr_grpo/fixed baselines,
    and the multiset engine for every estimator when ``C(n+G−1, G) ≤ max_multisets``.
    ``prob_total`` is ``max_x |Σ_y π(y|x) − 1|`` (a check of the enumeration).
    """
    from tqdm.auto import tqdm

    acc: dict[str, list] = {}
    put = lambda k, v: acc.setdefault(k, []).append(v)  # noqa: E731
    dev = []
    for prob in tqdm(problems, desc="exact", disable=not progress):
        o = _lm_outcomes(model, tok, task, prob, horizon)
        dev.append(abs(o.probs.sum() - 1))
        p = o.probs / o.probs.sum()
        full = exact.outcome_moments(o, probs=p)
        mom = {k: full[k] for k in ("mu", "var_r", "m_S", "m_rS", "m_r2S", "grad_sq_norm", "b_star")}
        for k, v in mom.items():
            put(f"moment/{k}", float(v))
        for lab in CLOSED_FORMS + ("fixed_mean", "fixed_b_star"):
            put(f"V_exact/{lab}", predicted_variance(mom, lab, group_size))
        keep = p > 0
        if exact.num_multisets(int(keep.sum()), group_size) <= max_multisets:
            ex = Outcomes(p, o.rewards, o.scores, o.sq_norms, o.lengths, o.log_probs)
            for lab, name, src in ESTIMATORS:
                if src != "exact":
                    continue
                _, v = exact.group_moments(ex, estimators.get(name), group_size)
                put(f"V_multiset/{lab}", v)
    res = {k: float(np.mean(v)) for k, v in acc.items()}
    res["prob_total_max_dev"] = float(max(dev))
    res["outcomes_per_prompt"] = float(len(enumerate_completions(tok.vocab_size, tok.eos_token_id, horizon)))
    return res
