"""General-G mean and variance of the linear group estimators by i.i.d. moment algebra (T1, T2).

The group estimate ``g_hat = (1/G) sum_j A_j s_j`` of reinforce, constant, rloo and dr_grpo is
written from the *definition* of each advantage as a sum over distinct response indices, e.g.
rloo: ``A_j = r_j - (1/(G-1)) sum_{k != j} r_k``. ``E g_hat`` and ``E||g_hat||^2`` then follow
from :mod:`.moments` with ``G`` symbolic; ``V = E||g_hat||^2 - ||E g_hat||^2``.
The batch formula (T2) and the SNR pieces (T7) use the same algebra over prompt groups.
"""
from __future__ import annotations

import sympy as sp

from .moments import GroupModel, Mono, UnitModel, expect, expect_vector, product, scale
from .trace import ProofTrace

__all__ = ["SYM", "group_estimate", "derive_mean", "derive_variance", "derive_t1_general",
           "derive_t2_general", "derive_batch", "derive_t7", "variance_oracles"]


class SYM:
    """Symbols shared by the moment derivations."""
    G, B = sp.symbols("G B", positive=True, integer=True)
    mu, b = sp.symbols("mu b", real=True)
    m2, var_r, m_S, m_r2S, gsq = sp.symbols("m2 var_r m_S m_r2S gsq", nonnegative=True)
    m_rS = sp.Symbol("m_rS", real=True)
    Q, msq = sp.symbols("Q msq", nonnegative=True)


MODEL = GroupModel(SYM.mu, SYM.m2, SYM.m_S, SYM.m_rS, SYM.m_r2S, SYM.gsq)
LINEAR = ("reinforce", "constant", "rloo", "dr_grpo")


def group_estimate(name: str) -> list[Mono]:
    """``g_hat`` as a sum over distinct indices, straight from the advantage's definition."""
    G, b = SYM.G, SYM.b
    own = Mono(1 / G, 1, (("r", 0), ("s", 0)))              # (1/G) sum_j r_j s_j
    other = Mono(1 / G, 2, (("r", 1), ("s", 0)))            # (1/G) sum_{j != k} r_k s_j
    score = Mono(1 / G, 1, (("s", 0),))                     # (1/G) sum_j s_j
    if name == "reinforce":                                 # A_j = r_j
        return [own]
    if name == "constant":                                  # A_j = r_j - b
        return [own, scale(-b, [score])[0]]
    if name == "rloo":                                      # A_j = r_j - sum_{k!=j} r_k/(G-1)
        return [own, scale(-1 / (G - 1), [other])[0]]
    if name == "dr_grpo":                                   # A_j = r_j - (r_j + sum_{k!=j} r_k)/G
        return [own, scale(-1 / G, [own])[0], scale(-1 / G, [other])[0]]
    raise ValueError(f"name={name!r} is not linear in the rewards; choose from {LINEAR}")


def derive_mean(name: str) -> sp.Expr:
    """``E g_hat = c g``; returns ``c`` (a function of G)."""
    means = expect_vector(group_estimate(name), MODEL, SYM.G)
    if set(means) - {"g"}:
        raise AssertionError(f"unexpected vector moments {set(means)} in E g_hat")
    return sp.factor(means.get("g", sp.Integer(0)))


def derive_variance(name: str) -> sp.Expr:
    """``V = E||g_hat||^2 - ||E g_hat||^2`` in the per-prompt moments, with E r^2 = var_r + mu^2."""
    g_hat = group_estimate(name)
    second = expect(product(g_hat, g_hat), MODEL, SYM.G)
    c = derive_mean(name)
    V = second - c ** 2 * SYM.gsq
    return sp.factor(sp.expand(V.subs(SYM.m2, SYM.var_r + SYM.mu ** 2)))


def _targets():
    """The stated closed forms of docs/theory.md (T2), the statements to be proved."""
    G, mu, v, mS, mrS, mr2S, gsq, b = (SYM.G, SYM.mu, SYM.var_r, SYM.m_S, SYM.m_rS,
                                       SYM.m_r2S, SYM.gsq, SYM.b)
    fixed = lambda bb: (mr2S - 2 * bb * mrS + bb ** 2 * mS - gsq) / G
    rloo = (mr2S - 2 * mu * mrS + mu ** 2 * mS + v * mS / (G - 1)) / G - (G - 2) / (G * (G - 1)) * gsq
    return {"reinforce": fixed(0), "constant": fixed(b), "rloo": rloo,
            "dr_grpo": ((G - 1) / G) ** 2 * rloo, "fixed": fixed}


def derive_t1_general(trace: ProofTrace) -> None:
    trace.note("T1, general G: g_hat = (1/G) sum_j A_j s_j written as sums over distinct indices;")
    trace.note("E over each coincidence pattern uses independence and E[s] = 0 (E[r_k s_j] = mu*0, k != j).")
    G = SYM.G
    expected = {"reinforce": 1, "constant": 1, "rloo": 1, "dr_grpo": (G - 1) / G}
    for name in LINEAR:
        c = derive_mean(name)
        trace.show(f"E g_hat[{name}] / g", c)
        trace.zero(f"{name}: E g_hat = ({sp.sstr(expected[name])}) * grad J for every G",
                   c - expected[name])


def derive_t2_general(trace: ProofTrace) -> None:
    trace.note("T2, general G: E||g_hat||^2 = sum over the coincidence patterns of (j,k,j',k'),")
    trace.note("each counted by the falling factorial G(G-1)...; then V = E||g_hat||^2 - ||E g_hat||^2.")
    n_patterns = len(product(group_estimate("rloo"), group_estimate("rloo")))
    trace.note(f"rloo: {n_patterns} (monomial, pattern) pairs expanded.")
    tg = _targets()
    derived = {}
    for name in LINEAR:
        derived[name] = derive_variance(name)
        trace.show(f"V[{name}]", derived[name])
        trace.zero(f"V[{name}] equals docs/theory.md's closed form for symbolic G", derived[name] - tg[name])
    trace.zero("V[dr_grpo] = ((G-1)/G)^2 V[rloo]",
               derived["dr_grpo"] - ((SYM.G - 1) / SYM.G) ** 2 * derived["rloo"])
    diff = derived["rloo"] - derived["constant"].subs(SYM.b, SYM.mu)
    trace.show("V[rloo] - V[b = mu]", sp.factor(diff))
    trace.zero("V[rloo] - V[b = mu] = (var_r m_S + ||g||^2) / (G (G-1))",
               diff - (SYM.var_r * SYM.m_S + SYM.gsq) / (SYM.G * (SYM.G - 1)))


def derive_batch(trace: ProofTrace, n_prompts: int = 3, dim: int = 2) -> None:
    """T2 batch: V_batch from B i.i.d. units, then the law of total variance over X prompts."""
    B = SYM.B
    u_bar = [Mono(1 / B, 1, (("u", 0),))]
    unit = UnitModel(SYM.Q, SYM.msq)
    v_batch = sp.factor(expect(product(u_bar, u_bar), unit, B) - SYM.msq)
    trace.note("Batch: u_b = g_hat of prompt x_b, i.i.d.; E||u_bar||^2 over the patterns b = b', b != b'.")
    trace.show("V_batch", v_batch)
    trace.zero("V_batch = (E||u||^2 - ||E u||^2) / B", v_batch - (SYM.Q - SYM.msq) / B)
    q = list(sp.symbols(f"q1:{n_prompts}", positive=True))
    q.append(1 - sum(q))
    m = [[sp.Symbol(f"m{x}_{i}", real=True) for i in range(dim)] for x in range(n_prompts)]
    Vx = [sp.Symbol(f"V{x}", nonnegative=True) for x in range(n_prompts)]
    Q = sum(q[x] * (Vx[x] + sum(c ** 2 for c in m[x])) for x in range(n_prompts))   # E_x E[||u||^2 | x]
    mean = [sum(q[x] * m[x][i] for x in range(n_prompts)) for i in range(dim)]      # E u = E_x m_x
    derived = v_batch.subs({SYM.Q: Q, SYM.msq: sum(c ** 2 for c in mean)})
    target = (sum(q[x] * sum((m[x][i] - mean[i]) ** 2 for i in range(dim)) for x in range(n_prompts))
              + sum(q[x] * Vx[x] for x in range(n_prompts))) / B
    trace.note(f"X = {n_prompts} prompts with probabilities q, means m_x in R^{dim}, variances V_x:")
    trace.zero("V_batch = (1/B)(E_x||m_x - E_x m_x||^2 + E_x V_x)", derived - target)


def derive_t7(trace: ProofTrace) -> None:
    """T7: expectations of Sigma_hat, V_hat and the corrected numerator, B symbolic."""
    B, Q, msq = SYM.B, SYM.Q, SYM.msq
    unit = UnitModel(Q, msq)
    u_bar = [Mono(1 / B, 1, (("u", 0),))]
    diag = [Mono(sp.Integer(1), 1, (("u", 0), ("u", 0)))]                 # sum_b ||u_b||^2
    ss = diag + scale(-B, product(u_bar, u_bar))                           # sum_b ||u_b - u_bar||^2
    sigma = sp.factor(expect(ss, unit, B) / (B - 1))
    trace.note("T7: sum_b ||u_b - u_bar||^2 = sum_b ||u_b||^2 - B ||u_bar||^2, expanded over patterns.")
    trace.show("E[Sigma_hat]", sigma)
    trace.zero("Sigma_hat is unbiased for tr Cov(u) = Q - ||m||^2", sigma - (Q - msq))
    v_true = sp.factor(expect(product(u_bar, u_bar), unit, B) - msq)
    trace.zero("V_hat = Sigma_hat / B is unbiased for V = tr Var(u_bar)", sigma / B - v_true)
    plug = expect(product(u_bar, u_bar), unit, B)
    trace.show("E||u_bar||^2 (plug-in numerator)", sp.factor(plug))
    trace.zero("E[||u_bar||^2 - V_hat] = ||E u||^2", plug - sigma / B - msq)


def variance_oracles() -> dict:
    """numpy functions of (mu, var_r, m_S, m_rS, m_r2S, gsq, G[, b]) from the derived V's
    (the order of ``exact.PromptMoments``), and ``<name>_mean_factor(G)`` = c in E g_hat = c g."""
    args = (SYM.mu, SYM.var_r, SYM.m_S, SYM.m_rS, SYM.m_r2S, SYM.gsq, SYM.G)
    out = {}
    for name in LINEAR:
        extra = (SYM.b,) if name == "constant" else ()
        out[name] = sp.lambdify(args + extra, derive_variance(name), "numpy")
        out[name + "_mean_factor"] = sp.lambdify((SYM.G,), derive_mean(name), "numpy")
    return out
