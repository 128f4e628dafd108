"""GSM-Infinite as a generated task: options, one-call generation, and the split protocol."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ...checks import is_int
from .loader import check_subset
from .realistic import TEMPLATES, check_realistic_op, draft_realistic, finish_realistic, realistic_key
from .symbolic import check_symbolic_op, draft_symbolic, finish_symbolic, symbolic_key

# The sleep paper: ops uniform in [1, 8], problems of 2,000-3,300 tokens with distractors.
PAPER_OPS: tuple[int, ...] = tuple(range(1, 9))
PAPER_CONTEXT_TOKENS: tuple[int, int] = (2000, 3300)


def parse_length(length: int | str) -> int:
    """A context length as the Hub names it ("zero_context", "0", "8k", 16000) -> tokens."""
    if is_int(length):
        value = length
    elif isinstance(length, str):
        text = length.strip().lower()
        if text in ("zero_context", "0", ""):
            return 0
        try:
            value = int(text[:-1]) * 1000 if text.endswith("k") else int(text)
        except ValueError:
            raise ValueError(f"cannot read context length {length!r} (expected e.g. 0, 2000, '8k')") from None
    else:
        raise ValueError(f"context length must be an int or a string like '8k', got {length!r}")
    if value < 0:
        raise ValueError(f"context length must be non-negative, got {value}")
    return value


@dataclass(frozen=True)
class GSMInfiniteConfig:
    """Generation options. `ops` are drawn uniformly per problem; `context_tokens` is the
    distractor budget (an int, a Hub name like "8k", or a (low, high) range drawn uniformly
    per problem); `count_tokens` measures it (default: words and punctuation; pass e.g.
    `lambda s: len(tokenizer(s).input_ids)` for your model's count). Symbolic problems turn
    the budget into noise variables the way the public generator does."""

    subset: str = "medium"
    ops: tuple[int, ...] = PAPER_OPS
    context_tokens: int | str | tuple[int, int] = 0
    templates: tuple[str, ...] = tuple(TEMPLATES)
    count_tokens: Callable[[str], int] | None = None

    def __post_init__(self) -> None:
        check_subset(self.subset)
        ops = (self.ops,) if isinstance(self.ops, int) else tuple(self.ops)
        if not ops:
            raise ValueError("ops must name at least one op count")
        check = check_symbolic_op if self.subset == "symbolic" else check_realistic_op
        for op in ops:
            check(op)
        object.__setattr__(self, "ops", ops)
        budget = self.context_tokens
        if isinstance(budget, Sequence) and not isinstance(budget, str):
            low, high = (parse_length(x) for x in budget)
            if low > high:
                raise ValueError(f"context_tokens range must be (low, high) with low <= high, got {budget!r}")
            object.__setattr__(self, "context_tokens", (low, high))
        else:
            object.__setattr__(self, "context_tokens", parse_length(budget))
        templates = tuple(self.templates)
        unknown = [t for t in templates if t not in TEMPLATES]
        if unknown or not templates:
            raise ValueError(f"unknown templates {unknown}; expected some of {list(TEMPLATES)}")
        object.__setattr__(self, "templates", templates)

    @classmethod
    def paper(cls, subset: str = "medium", **options: Any) -> GSMInfiniteConfig:
        """The sleep paper's setting: ops 1..8, 2,000-3,300-token problems (the paper does not
        name its subset; medium by default)."""
        return cls(subset=subset, ops=PAPER_OPS, context_tokens=PAPER_CONTEXT_TOKENS, **options)


class GSMInfiniteTask:
    """Draws Hub-format GSM-Infinite rows (see `symbolic` and `realistic`)."""

    name = "gsm_infinite"

    def __init__(self, config: GSMInfiniteConfig | None = None, **overrides: Any):
        base = config if config is not None else GSMInfiniteConfig()
        self.config = replace(base, **overrides) if overrides else base

    def _budget(self, rng: random.Random) -> int:
        budget = self.config.context_tokens
        return rng.randint(*budget) if isinstance(budget, tuple) else budget

    # -- splits.SplitTask -----------------------------------------------------------------
    def draft(self, rng: random.Random) -> Any:
        op = rng.choice(self.config.ops)
        if self.config.subset == "symbolic":
            return draft_symbolic(rng, op)
        template = TEMPLATES[rng.choice(self.config.templates)]
        return draft_realistic(rng, op, hard=self.config.subset == "hard", template=template)

    def key(self, draft: Any) -> str:
        return symbolic_key(draft) if self.config.subset == "symbolic" else realistic_key(draft)

    def finish(self, draft: Any, rng: random.Random) -> dict[str, Any]:
        budget = self._budget(rng)
        if self.config.subset == "symbolic":
            return finish_symbolic(draft, rng, length=budget)
        return finish_realistic(draft, rng, context_tokens=budget, count_tokens=self.config.count_tokens)

    def example(self, rng: random.Random) -> dict[str, Any]:
        return self.finish(self.draft(rng), rng)

    def describe(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "task": self.name,
            "subset": cfg.subset,
            "ops": list(cfg.ops),
            "context_tokens": cfg.context_tokens,
            "templates": list(cfg.templates),
        }


def generate_gsm_infinite(
    subset: str,
    op: int,
    num_examples: int,
    *,
    seed: int = 0,
    context_tokens: int | str = 0,
    **options: Any,
) -> list[dict[str, Any]]:
    """`num_examples` Hub-format rows of one subset and op count (like one `ops_{op}` split;
    `id` counts from 0), without train/test filtering. Deterministic per seed."""
    task = GSMInfiniteTask(
        GSMInfiniteConfig(subset=subset, ops=(op,), context_tokens=context_tokens, **options)
    )
    rng = random.Random(seed)
    rows = []
    for i in range(num_examples):
        row = task.example(rng)
        row["id"] = i
        rows.append(row)
    return rows
