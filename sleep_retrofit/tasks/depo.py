"""Depo: k-hop retrieval on a shuffled directed cycle (Physics of Language Models 4.1).

n distinct multi-token words lie on one directed cycle w_0 -> w_1 -> ... -> w_{n-1} -> w_0.
The context lists the n edges "u v" in random order; the queries ask for the k-th
successor of a word:

    [u_1 v_1] [u_2 v_2] ... [u_n v_n]   hop{k} x -> y   hop{k'} x' -> y'   ...
     <---- context: n * 2 * word_length tokens ---->  <------ target part ------>

Every word is `word_length` symbol tokens (fixed, so edges need no separators). Loss is on
the answer tokens y only; the target part starts at the first query's hop token. The answer
to "hop{k} x" is the word k steps after x along the cycle (k may exceed n: it wraps).

Defaults are the sleep paper's sizes: cycles of at most 75 nodes written in at most
75 * 2 * 2 = 300 tokens, 10 queries of 6 tokens (<= 60 tokens), so with L = 75 and the
context left-padded to 300 the graph spans four windows and the queries a fifth (T = 360).
Training draws n uniformly from [min_nodes, max_nodes] and each query's k from `hops`
(1..16); `DepoConfig.for_test()` fixes n = max_nodes and k to the powers of two up to 16,
as in Depo's test protocol (one k per config with `hops=(k,)` gives per-k numbers).
"""

from __future__ import annotations

import random
import string
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from transformers import PreTrainedTokenizerFast

from ..checks import is_int
from .tokenizer import WordVocabulary

SEPARATOR_TOKEN = "->"


@dataclass(frozen=True)
class DepoConfig:
    """Depo options. `max_hops` fixes the hop-token vocabulary (hop1..hop{max_hops}) so that
    train and test configs share a tokenizer; `hops` are the k values actually drawn (default
    all of 1..max_hops)."""

    min_nodes: int = 3
    max_nodes: int = 75
    num_queries: int = 10
    hops: tuple[int, ...] | None = None  # None: every k in 1..max_hops
    max_hops: int = 16
    word_length: int = 2
    num_symbols: int = 10

    def __post_init__(self) -> None:
        for name in ("min_nodes", "max_nodes", "num_queries", "max_hops", "word_length", "num_symbols"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.min_nodes < 2:
            raise ValueError(f"min_nodes must be at least 2 (a cycle needs two words), got {self.min_nodes}")
        if self.max_nodes < self.min_nodes:
            raise ValueError(f"max_nodes ({self.max_nodes}) must be >= min_nodes ({self.min_nodes})")
        if self.num_symbols > len(string.ascii_lowercase):
            raise ValueError(f"num_symbols must be at most 26, got {self.num_symbols}")
        if self.num_symbols**self.word_length < self.max_nodes:
            raise ValueError(
                f"num_symbols**word_length = {self.num_symbols**self.word_length} distinct words cannot "
                f"label max_nodes = {self.max_nodes} nodes; raise num_symbols or word_length"
            )
        hops = tuple(range(1, self.max_hops + 1)) if self.hops is None else tuple(self.hops)
        if not hops or any(not is_int(k) or not 1 <= k <= self.max_hops for k in hops):
            raise ValueError(
                f"hops must be a non-empty sequence of ints in [1, max_hops={self.max_hops}], "
                f"got {self.hops!r}"
            )
        object.__setattr__(self, "hops", hops)

    @classmethod
    def for_test(cls, hops: Sequence[int] | None = None, **options: Any) -> DepoConfig:
        """The test protocol: n fixed at max_nodes, k in the powers of two up to max_hops
        (or the given `hops`)."""
        base = cls(**options)
        test_hops = (
            tuple(hops) if hops is not None else tuple(1 << i for i in range(base.max_hops.bit_length()))
        )
        return replace(base, min_nodes=base.max_nodes, hops=test_hops)


class DepoTask:
    """Generator, tokenisation and scoring of Depo (see the module docstring)."""

    name = "depo"

    def __init__(self, config: DepoConfig | None = None, **overrides: Any):
        base = config if config is not None else DepoConfig()
        self.config = replace(base, **overrides) if overrides else base
        self.alphabet = list(string.ascii_lowercase[: self.config.num_symbols])
        self.vocabulary = WordVocabulary(self.symbols())

    def symbols(self) -> list[str]:
        return self.alphabet + [SEPARATOR_TOKEN] + [f"hop{k}" for k in range(1, self.config.max_hops + 1)]

    def tokenizer(self) -> PreTrainedTokenizerFast:
        return self.vocabulary.tokenizer()

    # -- generation (splits.SplitTask) --------------------------------------------------
    def draft(self, rng: random.Random) -> list[str]:
        """The cycle: distinct words (space-joined symbol tokens) in cycle order."""
        cfg = self.config
        num_nodes = rng.randint(cfg.min_nodes, cfg.max_nodes)
        words: list[str] = []
        seen: set[str] = set()
        while len(words) < num_nodes:
            word = " ".join(rng.choice(self.alphabet) for _ in range(cfg.word_length))
            if word not in seen:
                seen.add(word)
                words.append(word)
        return words

    def key(self, cycle: list[str]) -> str:
        """The cycle up to rotation (the same graph however it is written or queried)."""
        start = min(range(len(cycle)), key=cycle.__getitem__)
        return "|".join(cycle[start:] + cycle[:start])

    def finish(self, cycle: list[str], rng: random.Random) -> dict[str, Any]:
        cfg = self.config
        n = len(cycle)
        edges = [(cycle[i], cycle[(i + 1) % n]) for i in range(n)]
        rng.shuffle(edges)
        tokens: list[str] = []
        for u, v in edges:
            tokens += u.split() + v.split()
        target_start = len(tokens)
        loss_mask = [0] * len(tokens)
        answer_hops = [0] * len(tokens)
        sources, hops, targets = [], [], []
        for _ in range(cfg.num_queries):
            k = rng.choice(cfg.hops)
            i = rng.randrange(n)
            answer = cycle[(i + k) % n]
            sources.append(cycle[i])
            hops.append(k)
            targets.append(answer)
            query = [f"hop{k}"] + cycle[i].split() + [SEPARATOR_TOKEN]
            tokens += query + answer.split()
            loss_mask += [0] * len(query) + [1] * cfg.word_length
            answer_hops += [0] * len(query) + [k] * cfg.word_length
        return {
            "cycle": list(cycle),
            "num_nodes": n,
            "query_sources": sources,
            "query_hops": hops,
            "query_targets": targets,
            "tokens": tokens,
            "text": " ".join(tokens),
            "input_ids": self.vocabulary.ids(tokens),
            "loss_mask": loss_mask,
            "answer_hops": answer_hops,
            "target_start": target_start,
        }

    def example(self, rng: random.Random) -> dict[str, Any]:
        return self.finish(self.draft(rng), rng)

    def describe(self) -> dict[str, Any]:
        return {"task": self.name, **asdict(self.config)}


def score_depo(
    predicted_targets: Sequence[Sequence[str | Sequence[str] | None]], examples: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """Exact-match accuracy of predicted answer words, overall and per hop count k.

    `predicted_targets[i][j]` is the prediction for query j of example i: a word as
    space-joined tokens ("a b"), a token list, or None (no answer; wrong)."""
    if len(predicted_targets) != len(examples):
        raise ValueError(
            f"predictions ({len(predicted_targets)}) and examples ({len(examples)}) differ in length"
        )
    right: dict[int, int] = {}
    total: dict[int, int] = {}
    for i, (preds, example) in enumerate(zip(predicted_targets, examples, strict=True)):
        golds, hops = example["query_targets"], example["query_hops"]
        if len(preds) != len(golds):
            raise ValueError(f"example {i}: {len(golds)} queries but {len(preds)} predictions")
        for pred, gold, k in zip(preds, golds, hops, strict=True):
            words = None if pred is None else (pred.split() if isinstance(pred, str) else list(pred))
            total[k] = total.get(k, 0) + 1
            right[k] = right.get(k, 0) + int(words == gold.split())
    if not total:
        raise ValueError("no queries to score")
    return {
        "count": sum(total.values()),
        "accuracy": sum(right.values()) / sum(total.values()),
        "accuracy_by_hops": {k: right[k] / total[k] for k in sorted(total)},
        "count_by_hops": {k: total[k] for k in sorted(total)},
    }
