"""A built-in verifiable task: synthetic arithmetic prompts with an exact-match reward.

Prompts look like ``"12+7="``; the answer is the decimal result (``"19"``); a completion earns
reward 1 when its text, up to the end-of-sequence token, equals the answer exactly, and 0
otherwise (an RLVR reward in ``{0, 1}``, docs/theory.md: Setting and notation). Everything runs offline:
:class:`CharTokenizer` is a matching character tokenizer with ``<pad>`` and ``<eos>`` tokens, so
the scripts need no downloads.

A Hugging Face tokenizer can stand in for :class:`CharTokenizer` (``--model PATH``): anything with
``encode(text) -> list[int]``, ``decode(ids) -> str``, ``pad_token_id`` and ``eos_token_id`` works
(see :func:`as_task_tokenizer`).

Randomness enters as a ``numpy.random.Generator``; nothing here keeps hidden state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["CharTokenizer", "ArithmeticTask", "Problem", "exact_match_reward",
           "as_task_tokenizer", "HFTokenizerAdapter"]


class CharTokenizer:
    """One token per character of ``alphabet``, plus ``<pad>`` (id 0) and ``<eos>`` (id 1).

    ``decode`` stops at the first ``<eos>``; a ``<pad>`` sampled inside a completion is a real
    (wrong) token and is rendered as the text ``"<pad>"``, so it never matches an answer (the
    reward of a completion is then exactly ``1`` iff it is ``answer ⊕ <eos>``, which makes the
    expected reward computable exactly). Unknown characters are an error at encode time.
    """

    PAD, EOS = "<pad>", "<eos>"

    def __init__(self, alphabet: str = "0123456789+-*="):
        if len(set(alphabet)) != len(alphabet) or not alphabet:
            raise ValueError(f"alphabet must be a non-empty string of distinct characters, got {alphabet!r}")
        self.alphabet = alphabet
        self.pad_token_id, self.eos_token_id = 0, 1
        self._id = {c: i + 2 for i, c in enumerate(alphabet)}
        self._char = {i: c for c, i in self._id.items()}

    @property
    def vocab_size(self) -> int:
        return len(self.alphabet) + 2

    def encode(self, text: str) -> list[int]:
        bad = sorted({c for c in text if c not in self._id})
        if bad:
            raise ValueError(f"text={text!r} has characters {bad} outside the alphabet {self.alphabet!r}")
        return [self._id[c] for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        out = []
        for i in ids:
            i = int(i)
            if i == self.eos_token_id:
                break
            out.append(self.PAD if i == self.pad_token_id else self._char.get(i, "<unk>"))
        return "".join(out)


class HFTokenizerAdapter:
    """A Hugging Face tokenizer behind the task's tokenizer protocol (no special tokens added).

    ``decode`` cuts at the first ``eos_token_id``. When the tokenizer has no pad token, the
    eos token pads (as for base Qwen3 checkpoints, where both are ``<|endoftext|>``).
    """

    def __init__(self, hf_tokenizer):
        self.hf = hf_tokenizer
        if hf_tokenizer.eos_token_id is None:
            raise ValueError("tokenizer has no eos_token_id; the task needs one to end completions")
        self.eos_token_id = int(hf_tokenizer.eos_token_id)
        pad = hf_tokenizer.pad_token_id
        self.pad_token_id = int(pad) if pad is not None else self.eos_token_id

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def encode(self, text: str) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids]
        if self.eos_token_id in ids:
            ids = ids[: ids.index(self.eos_token_id)]
        return self.hf.decode(ids, skip_special_tokens=True)


def as_task_tokenizer(tok):
    """Return ``tok`` if it already speaks the task protocol, else wrap a HF tokenizer."""
    if isinstance(tok, (CharTokenizer, HFTokenizerAdapter)):
        return tok
    if hasattr(tok, "encode") and hasattr(tok, "decode") and hasattr(tok, "eos_token_id"):
        return HFTokenizerAdapter(tok)
    raise TypeError(f"tokenizer must be a CharTokenizer or a Hugging Face tokenizer, got {type(tok).__name__}")


@dataclass(frozen=True)
class Problem:
    """One prompt and its exact answer."""

    prompt: str
    answer: str


def exact_match_reward(completion: str, answer: str) -> float:
    """``r = 1`` if ``completion.strip() == answer`` else ``0`` (a verifiable reward in {0, 1})."""
    return 1.0 if completion.strip() == answer else 0.0


#: The laws of :meth:`ArithmeticTask.sample` over the task's problems.
SAMPLINGS = ("uniform", "digits")


@dataclass(frozen=True)
class ArithmeticTask:
    """Prompts ``"a+b="`` with operands in ``[0, max_operand]`` (``ops`` picks the operators).

    ``max_answer`` (optional) rejects problems whose result exceeds it, e.g. ``max_answer=9``
    keeps single-digit answers (two completion tokens with ``<eos>``), which makes the set of
    completions small enough to enumerate exactly (``validate.EnumeratedLM``).

    ``sampling`` is the law of :meth:`sample` over the same set of problems: ``"uniform"``
    (every problem equally likely) or ``"digits"`` (each operand's number of digits uniform over
    ``1 .. len(str(max_operand))``, then the operand uniform among the numbers of that many
    digits, ``0-9`` counting as one digit; the operator uniform over ``ops``). ``"digits"`` gives
    short and long operands equal weight, so answer (completion) lengths vary much more than
    under ``"uniform"``, where most operands have the most digits.
    """

    max_operand: int = 9
    ops: str = "+"
    max_answer: int | None = None
    sampling: str = "uniform"

    def __post_init__(self):
        if self.max_operand < 0:
            raise ValueError(f"max_operand must be >= 0, got {self.max_operand}")
        if not self.ops or any(o not in "+-*" for o in self.ops):
            raise ValueError(f"ops must be a non-empty subset of '+-*', got {self.ops!r}")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {self.sampling!r}")
        if self.max_answer is not None and not self.all_problems():
            raise ValueError(f"no problem has an answer <= max_answer={self.max_answer}")

    @staticmethod
    def _apply(a: int, op: str, b: int) -> int:
        return a + b if op == "+" else a - b if op == "-" else a * b

    def all_problems(self) -> list[Problem]:
        """Every problem of the task, in a fixed order."""
        out = []
        for a in range(self.max_operand + 1):
            for op in self.ops:
                for b in range(self.max_operand + 1):
                    v = self._apply(a, op, b)
                    if self.max_answer is None or v <= self.max_answer:
                        out.append(Problem(f"{a}{op}{b}=", str(v)))
        return out

    def sample(self, n: int, rng: np.random.Generator) -> list[Problem]:
        """``n`` i.i.d. problems of :meth:`all_problems` (so prompts are i.i.d., T7), uniform or
        digit-balanced (``sampling``); digit-balanced draws outside ``max_answer`` are redrawn."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if self.sampling == "uniform":
            pool = self.all_problems()
            return [pool[i] for i in rng.integers(0, len(pool), size=n)]
        out = []
        while len(out) < n:
            a, b = self._digit_balanced_operand(rng), self._digit_balanced_operand(rng)
            op = self.ops[int(rng.integers(0, len(self.ops)))]
            v = self._apply(a, op, b)
            if self.max_answer is None or v <= self.max_answer:
                out.append(Problem(f"{a}{op}{b}=", str(v)))
        return out

    def _digit_balanced_operand(self, rng: np.random.Generator) -> int:
        """An operand whose digit count is uniform over ``1 .. len(str(max_operand))``."""
        d = int(rng.integers(1, len(str(self.max_operand)) + 1))
        lo = 0 if d == 1 else 10 ** (d - 1)
        return int(rng.integers(lo, min(10 ** d - 1, self.max_operand) + 1))

    @property
    def max_answer_chars(self) -> int:
        """Longest answer in characters (completions need this many tokens plus ``<eos>``)."""
        return max(len(p.answer) for p in self.all_problems())

    def rewards(self, completions: Sequence[Sequence[str]], problems: Sequence[Problem]) -> np.ndarray:
        """Exact-match rewards, shape ``(B, G)`` for ``B`` problems with ``G`` completions each."""
        if len(completions) != len(problems):
            raise ValueError(f"completions has {len(completions)} groups but problems has {len(problems)}")
        return np.array([[exact_match_reward(c, p.answer) for c in group]
                         for group, p in zip(completions, problems)], dtype=np.float64)
