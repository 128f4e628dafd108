"""Rule 110: the sleep paper's elementary-cellular-automaton task.

Rule 110 maps each neighbourhood (left, centre, right) to the centre's next bit:
111->0, 110->1, 101->1, 100->0, 011->1, 010->1, 001->1, 000->0 (the bits of 110 = 0b01101110,
indexed by 4*left + 2*centre + right).

Layout of one example (paper sizes: S=4 strings of W=24 bits, chunk L=24):

    [string 0: W bit tokens] [string 1] ... [string S-1] [?] [label 0] ... [label S-1]
     <----------------------- context: S*W tokens ----------> <--- target part --->

Label j is the first bit of string j after t steps. The strings are the context (no loss);
the target part starts at the query token `?`, whose output predicts label 0; label j's token
is then the input that predicts label j+1 (HF's shifted next-token loss, so every label is
predicted inside the target chunk). The paper counts T = 96 + 4 = 100 tokens; our query
token makes it 101: it is the position that predicts the first label. With L = W every
string is its own chunk and is evicted before the question.

Tokens: by default string j has its own pair of bit tokens `s{j}_0` / `s{j}_1`, so every
token names its string and a label token fed back in names the string just answered
(with shared tokens only the position does). `per_string_tokens=False` uses `0` / `1`.

Announcing t (`announce_steps=True`): every string is preceded by a step token `t{t}`, so each
context chunk is `[t{t}] [W bits]` (W + 1 tokens: use L = W + 1, `Rule110Task.chunk_length`)
and the model knows which t is asked while it consolidates the string. A run that mixes
several t must announce it: without it the labels are ambiguous (the best predictor that
cannot see t scores per-label .70-.75, exact .23-.31 at W=16, t mixed over 0..4). The paper
trains one t per run and announces nothing (the default). The vocabulary holds the step
tokens t0 .. t{step_vocabulary - 1} whatever t is, so one tokenizer serves every t.

Scoring: exact match must come from the model's own predictions. Teacher forcing feeds the
gold label of string j back in as the input that predicts label j+1, which leaks t (and the
other strings' answers); the evaluation decodes the labels one by one instead, feeding its own
predicted bits back (`sleep_retrofit.evaluation.free_running_targets`).

Boundary: "periodic" (default; the string is a ring) or "zero" (cells beyond both ends are
0 at every step: a fixed null boundary of width W). The paper does not state its choice.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerFast

from ..checks import is_int
from .tokenizer import WordVocabulary

RULE_NUMBER = 110
BOUNDARIES = ("periodic", "zero")
QUERY_TOKEN = "?"
MAX_STEPS = 100_000


def rule110_step(cells: np.ndarray, boundary: str = "periodic") -> np.ndarray:
    """One Rule 110 step on the last axis of a 0/1 integer array `[..., W]`."""
    if boundary not in BOUNDARIES:
        raise ValueError(f"boundary must be one of {list(BOUNDARIES)}, got {boundary!r}")
    cells = np.asarray(cells, dtype=np.int64)
    if boundary == "periodic":
        left, right = np.roll(cells, 1, axis=-1), np.roll(cells, -1, axis=-1)
    else:
        zero = np.zeros_like(cells[..., :1])
        left = np.concatenate([zero, cells[..., :-1]], axis=-1)
        right = np.concatenate([cells[..., 1:], zero], axis=-1)
    return (RULE_NUMBER >> (4 * left + 2 * cells + right)) & 1


def rule110_evolve(cells: np.ndarray, steps: int, boundary: str = "periodic") -> np.ndarray:
    """`steps` Rule 110 steps on the last axis of `[..., W]`."""
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    state = np.asarray(cells, dtype=np.int64)
    for _ in range(steps):
        state = rule110_step(state, boundary)
    return state


@dataclass(frozen=True)
class Rule110Config:
    """Rule 110 task options; the defaults are the paper's (t is the difficulty axis)."""

    width: int = 24
    steps: int = 8
    num_strings: int = 4
    boundary: str = "periodic"
    per_string_tokens: bool = True
    announce_steps: bool = False
    step_vocabulary: int = 64

    def __post_init__(self) -> None:
        for name in ("width", "num_strings", "step_vocabulary"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not is_int(self.steps) or not 0 <= self.steps <= MAX_STEPS:
            raise ValueError(f"steps (t) must be an int in [0, {MAX_STEPS}], got {self.steps!r}")
        if self.boundary not in BOUNDARIES:
            raise ValueError(f"boundary must be one of {list(BOUNDARIES)}, got {self.boundary!r}")
        if not isinstance(self.announce_steps, bool):
            raise ValueError(f"announce_steps must be true or false, got {self.announce_steps!r}")
        if self.announce_steps and self.steps >= self.step_vocabulary:
            raise ValueError(
                f"steps (t) = {self.steps} has no step token: announced t must be < step_vocabulary "
                f"({self.step_vocabulary}); raise step_vocabulary"
            )

    @property
    def chunk_length(self) -> int:
        """Tokens per string in the context: W bits, plus the step token when t is announced.
        With L = chunk_length every string is its own chunk."""
        return self.width + int(self.announce_steps)


class Rule110Task:
    """Generator, tokenisation and scoring of the Rule 110 task (see the module docstring)."""

    name = "rule110"

    def __init__(self, config: Rule110Config | None = None, **overrides: Any):
        base = config if config is not None else Rule110Config()
        self.config = replace(base, **overrides) if overrides else base
        self.vocabulary = WordVocabulary(self.symbols())

    # -- vocabulary ---------------------------------------------------------------------
    def bit_token(self, string_index: int, bit: int) -> str:
        return f"s{string_index}_{bit}" if self.config.per_string_tokens else str(bit)

    @staticmethod
    def step_token(steps: int) -> str:
        return f"t{steps}"

    @property
    def chunk_length(self) -> int:
        return self.config.chunk_length

    def symbols(self) -> list[str]:
        strings = range(self.config.num_strings) if self.config.per_string_tokens else [0]
        symbols = [self.bit_token(j, b) for j in strings for b in (0, 1)] + [QUERY_TOKEN]
        if self.config.announce_steps:
            symbols += [self.step_token(t) for t in range(self.config.step_vocabulary)]
        return symbols

    def tokenizer(self) -> PreTrainedTokenizerFast:
        return self.vocabulary.tokenizer()

    # -- generation (splits.SplitTask) --------------------------------------------------
    def draft(self, rng: random.Random) -> list[list[int]]:
        """The random bit strings, `[num_strings][width]`."""
        return [
            [rng.getrandbits(1) for _ in range(self.config.width)] for _ in range(self.config.num_strings)
        ]

    def key(self, strings: list[list[int]]) -> str:
        return "|".join("".join(map(str, bits)) for bits in strings)

    def finish(self, strings: list[list[int]], rng: random.Random | None = None) -> dict[str, Any]:
        cfg = self.config
        final = rule110_evolve(np.array(strings), cfg.steps, cfg.boundary)
        answer = [int(bit) for bit in final[:, 0]]
        announce = [self.step_token(cfg.steps)] if cfg.announce_steps else []
        tokens = [
            tok for j, bits in enumerate(strings) for tok in announce + [self.bit_token(j, b) for b in bits]
        ]
        target_start = len(tokens)
        tokens += [QUERY_TOKEN] + [self.bit_token(j, bit) for j, bit in enumerate(answer)]
        loss_mask = [0] * (target_start + 1) + [1] * cfg.num_strings
        return {
            "strings": [list(bits) for bits in strings],
            "steps": cfg.steps,
            "answer": answer,
            "tokens": tokens,
            "text": " ".join(tokens),
            "input_ids": self.vocabulary.ids(tokens),
            "loss_mask": loss_mask,
            "target_start": target_start,
        }

    def example(self, rng: random.Random) -> dict[str, Any]:
        """One example straight from `rng` (no split filtering)."""
        return self.finish(self.draft(rng))

    def describe(self) -> dict[str, Any]:
        return {"task": self.name, **asdict(self.config)}

    # -- scoring ------------------------------------------------------------------------
    def parse_labels(self, tokens: Sequence[str]) -> list[int | None]:
        """Predicted label tokens (one per string, in order) -> bits; a token that is not a
        bit of the right string (e.g. string 1's token in string 0's slot) -> None (wrong)."""
        if len(tokens) != self.config.num_strings:
            raise ValueError(f"expected {self.config.num_strings} label tokens, got {len(tokens)}")
        bits: list[int | None] = []
        for j, token in enumerate(tokens):
            valid = {self.bit_token(j, 0): 0, self.bit_token(j, 1): 1}
            bits.append(valid.get(token))
        return bits


def score_rule110(
    predictions: Sequence[Sequence[int | None]], targets: Sequence[Sequence[int]]
) -> dict[str, Any]:
    """Score predicted label bits against the answers, one row per example.

    Returns exact_match (all labels right), per_label_accuracy (one entry per string), the
    uniform-guess chance levels (0.5 per label, 0.5**S exact) and the majority baselines of
    these targets (the best constant guess: Rule 110 labels are not balanced). A prediction
    of None (unparseable) counts as wrong."""
    if len(predictions) != len(targets):
        raise ValueError(f"predictions ({len(predictions)}) and targets ({len(targets)}) differ in length")
    if not targets:
        raise ValueError("no examples to score")
    num_labels = len(targets[0])
    for i, (pred, gold) in enumerate(zip(predictions, targets, strict=True)):
        if len(pred) != num_labels or len(gold) != num_labels:
            raise ValueError(
                f"example {i}: expected {num_labels} labels, got {len(pred)} predicted, {len(gold)} gold"
            )
    correct = np.array(
        [
            [p is not None and int(p) == int(g) for p, g in zip(pred, gold, strict=True)]
            for pred, gold in zip(predictions, targets, strict=True)
        ]
    )
    gold = np.array(targets, dtype=np.int64)
    ones = gold.mean(axis=0)
    majority_per_label = np.maximum(ones, 1.0 - ones)
    majority_guess = (ones >= 0.5).astype(np.int64)
    return {
        "count": len(targets),
        "exact_match": float(correct.all(axis=1).mean()),
        "per_label_accuracy": [float(x) for x in correct.mean(axis=0)],
        "chance_exact_match": 0.5**num_labels,
        "chance_per_label": 0.5,
        "majority_exact_match": float((gold == majority_guess).all(axis=1).mean()),
        "majority_per_label": [float(x) for x in majority_per_label],
    }
