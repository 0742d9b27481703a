"""Token MDPs (docs/theory.md: Problems with exact answers): autoregressive toy policies with a verifiable reward.

Vocabulary ``{0, …, V−1}`` with token 0 = EOS. A response is sampled token by token; it stops on
EOS (its length counts the EOS) or after ``H`` tokens (truncated). Per prompt there are
``Σ_{l<H} (V−1)^l + (V−1)^H`` possible responses; ``outcomes(x)`` enumerates them all.

The logits at a step are a sum of rows of parameter tables, ``z_t(v) = Σ_k θ_k[row_k(x, t, prefix), v]``,
a log-linear policy with indicator features. Two parametrisations:

* ``"tabular"``: one table with a row per (prompt, prefix). No parameter is shared between
  positions, so T8's martingale orthogonality ``E[s_t·s_t'] = 0`` holds per sample.
* ``"loglinear"``: shared tables ``bias`` (1 row), ``position`` (H rows), ``previous token``
  (V rows, row 0 at the first step) and ``prompt`` (X rows): every row is reused at many
  positions, like an LLM's weights, so per-sample orthogonality fails (only in expectation).

Per step, ``∂ log π(y_t) / ∂θ_k[row] = e_{y_t} − π_t`` (T8), added to each table's active row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import rewards as rewards_mod
from .base import Outcomes, check_enumerable, check_prompt, check_prompt_probs, log_softmax

EOS = rewards_mod.EOS
MAX_TABULAR_PARAMS = 5_000_000


@dataclass(frozen=True)
class _Table:
    name: str
    rows: int
    offset: int  # index of the table's first parameter in θ


class TokenMDP:
    """A token-level MDP with ``V`` tokens (EOS = 0), horizon ``H`` and ``X`` prompts.

    ``reward`` is a vectorised callable (see :mod:`oblr_theory.problems.rewards`) or the name of
    a built-in (``reward_kwargs`` are its arguments). ``theta`` defaults to
    ``init_scale · N(0, 1)`` drawn from ``seed``.
    """

    def __init__(self, vocab_size, horizon, reward, num_prompts=1, parametrization="tabular",
                 theta=None, prompt_probs=None, seed=0, init_scale=1.0, reward_kwargs=None):
        if int(vocab_size) != vocab_size or vocab_size < 2:
            raise ValueError(f"vocab_size must be an integer >= 2 (EOS plus one token), got {vocab_size!r}")
        if int(horizon) != horizon or horizon < 1:
            raise ValueError(f"horizon must be an integer >= 1, got {horizon!r}")
        if int(num_prompts) != num_prompts or num_prompts < 1:
            raise ValueError(f"num_prompts must be an integer >= 1, got {num_prompts!r}")
        self.vocab_size, self.horizon, self.num_prompts = int(vocab_size), int(horizon), int(num_prompts)
        self.prompt_probs = check_prompt_probs(prompt_probs, self.num_prompts)
        if isinstance(reward, str):
            if reward not in rewards_mod.BUILTIN:
                raise ValueError(f"unknown reward={reward!r}; built-ins: {sorted(rewards_mod.BUILTIN)}")
            reward = rewards_mod.BUILTIN[reward](**(reward_kwargs or {}))
        if not callable(reward):
            raise ValueError("reward must be a callable reward(prompts_n, tokens_nh, lengths_n) or a built-in name")
        self.reward = reward
        self.parametrization = parametrization
        self.tables = self._make_tables(parametrization)
        self.seed, self.init_scale = seed, init_scale
        if theta is None:
            theta = init_scale * np.random.default_rng(seed).standard_normal(self.dim)
        self._theta = self._check_theta(theta)

    # -- parameters ---------------------------------------------------------------------------
    def _make_tables(self, parametrization):
        V, H, X = self.vocab_size, self.horizon, self.num_prompts
        if parametrization == "tabular":
            nodes = X * self.num_prefixes
            if nodes * V > MAX_TABULAR_PARAMS:
                raise ValueError(f"parametrization='tabular' needs {nodes * V:,} parameters for V={V}, "
                                 f"H={H} (limit {MAX_TABULAR_PARAMS:,}); use parametrization='loglinear'")
            sizes = [("prefix", nodes)]
        elif parametrization == "loglinear":
            sizes = [("bias", 1), ("position", H), ("previous", V), ("prompt", X)]
        else:
            raise ValueError(f"parametrization must be 'tabular' or 'loglinear', got {parametrization!r}")
        tables, off = [], 0
        for name, rows in sizes:
            tables.append(_Table(name, rows, off))
            off += rows * V
        return tuple(tables)

    @property
    def num_prefixes(self) -> int:
        """Unfinished prefixes per prompt: ``Σ_{l<H} (V−1)^l``."""
        return sum((self.vocab_size - 1) ** l for l in range(self.horizon))

    @property
    def num_sequences(self) -> int:
        """Responses per prompt: ``Σ_{l<H} (V−1)^l + (V−1)^H``."""
        return self.num_prefixes + (self.vocab_size - 1) ** self.horizon

    @property
    def dim(self) -> int:
        return sum(t.rows for t in self.tables) * self.vocab_size

    @property
    def theta(self) -> np.ndarray:
        return self._theta.copy()

    def _check_theta(self, theta):
        theta = np.asarray(theta, dtype=np.float64)
        if theta.shape != (self.dim,):
            raise ValueError(f"theta must have shape ({self.dim},), got {theta.shape}")
        if not np.all(np.isfinite(theta)):
            raise ValueError("theta contains non-finite values")
        return theta.copy()

    def with_theta(self, theta) -> "TokenMDP":
        """The same MDP (same reward and tables) at parameters ``theta``."""
        new = object.__new__(TokenMDP)
        new.__dict__.update(self.__dict__)
        new._theta = self._check_theta(theta)
        return new

    # -- one step, vectorised over n partial sequences ------------------------------------------
    def param_rows(self, prompts_n, t, prev_n, code_n):
        """Index of each active table row's first parameter, shape (n, n_tables).

        ``t`` is the step (0-based), ``prev_n`` the previous token (0 at the first step),
        ``code_n`` the prefix's base-(V−1) code (used by the tabular table only).
        """
        V, cols = self.vocab_size, []
        for tab in self.tables:
            if tab.name == "prefix":
                row = prompts_n * self.num_prefixes + _prefix_offset(V, t) + code_n
            elif tab.name == "bias":
                row = np.zeros_like(prompts_n)
            elif tab.name == "position":
                row = np.full_like(prompts_n, t)
            elif tab.name == "previous":
                row = prev_n
            else:  # prompt
                row = prompts_n
            cols.append(tab.offset + row * V)
        return np.stack(cols, axis=1)

    def step_logits(self, rows_nk):
        """Logits ``z_t = Σ_k θ_k[row_k]``, shape (n, V)."""
        idx = rows_nk[:, :, None] + np.arange(self.vocab_size)  # (n, k, V)
        return self._theta[idx].sum(axis=1)

    # -- enumeration --------------------------------------------------------------------------
    def outcomes(self, x) -> Outcomes:
        """Every response to prompt ``x``, with exact log-probabilities, rewards and scores."""
        x = check_prompt(x, self.num_prompts)
        check_enumerable(self.num_sequences, self.dim, f"TokenMDP(V={self.vocab_size}, H={self.horizon})")
        V, H, d = self.vocab_size, self.horizon, self.dim
        # the frontier: unfinished prefixes of length t
        code, prev = np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64)
        logp, score = np.zeros(1), np.zeros((1, d))
        toks = np.full((1, H), -1, dtype=np.int64)
        done = []
        for t in range(H):
            n = len(code)
            rows = self.param_rows(np.full(n, x), t, prev, code)
            lp = log_softmax(self.step_logits(rows))  # (n, V)
            pi = np.exp(lp)
            child_logp = (logp[:, None] + lp).reshape(-1)  # (n*V,) parent-major
            child_score = np.repeat(score, V, axis=0)  # (n*V, d)
            tok = np.tile(np.arange(V), n)
            grad_nv = (np.eye(V)[None, :, :] - pi[:, None, :]).reshape(n * V, V)  # e_y − π_t
            for k in range(rows.shape[1]):
                cols = np.repeat(rows[:, k], V)[:, None] + np.arange(V)
                np.add.at(child_score, (np.arange(n * V)[:, None], cols), grad_nv)
            child_toks = np.repeat(toks, V, axis=0)
            child_toks[:, t] = tok
            stop = (tok == EOS) | (t + 1 == H)
            done.append((child_logp[stop], child_score[stop], child_toks[stop], np.full(stop.sum(), t + 1)))
            keep = ~stop
            code = (np.repeat(code, V) * (V - 1) + tok - 1)[keep]
            prev, logp, score, toks = tok[keep], child_logp[keep], child_score[keep], child_toks[keep]
        logp, score, toks, lengths = (np.concatenate(a) for a in zip(*done))
        rewards = self._rewards(np.full(len(logp), x), toks, lengths)
        return Outcomes(np.exp(logp), rewards, score, np.einsum("nd,nd->n", score, score),
                        lengths.astype(np.float64), logp)

    def sequences(self, x) -> np.ndarray:
        """The enumerated responses of prompt ``x`` (n, H), padded with -1, in ``outcomes`` order."""
        check_enumerable(self.num_sequences, 1, f"TokenMDP(V={self.vocab_size}, H={self.horizon})")
        V, H = self.vocab_size, self.horizon
        toks, done = np.full((1, H), -1, dtype=np.int64), []
        for t in range(H):
            child = np.repeat(toks, V, axis=0)
            child[:, t] = np.tile(np.arange(V), len(toks))
            stop = (child[:, t] == EOS) | (t + 1 == H)
            done.append(child[stop])
            toks = child[~stop]
        return np.concatenate(done)

    def _rewards(self, prompts_n, toks_nh, lengths_n):
        r = np.asarray(self.reward(prompts_n, toks_nh, lengths_n), dtype=np.float64)
        if r.shape != (len(prompts_n),) or not np.all(np.isfinite(r)):
            raise ValueError("the reward function must return finite float rewards of shape (n,)")
        return r

    def __repr__(self) -> str:
        name = getattr(self.reward, "name", "custom")
        return (f"TokenMDP(V={self.vocab_size}, H={self.horizon}, X={self.num_prompts}, "
                f"{self.parametrization}, reward={name})")


def _prefix_offset(V: int, t: int) -> int:
    """Index of the first length-``t`` prefix among all prefixes: ``Σ_{l<t} (V−1)^l``."""
    return sum((V - 1) ** l for l in range(t))
