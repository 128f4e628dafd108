"""Timed generation from a converted model: what ``sleep-retrofit generate`` runs and reports
(consolidation and wake times per chunk, decode time per token)."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList

from .checks import is_int
from .converted import quiet_transformers
from .errors import ConvertError
from .modeling import SleepRetrofitForCausalLM
from .sleep import SleepCache, SleepSettings

__all__ = ["GenerationReport", "timed_generate"]


@dataclass
class GenerationReport:
    """What :func:`timed_generate` measured. Times in seconds.

    ``wake_seconds`` holds one entry per decode step after the first token: the forward of one
    token minus any consolidation that step triggered (a chunk filled up), i.e. the wake cost.
    """

    completion: str
    prompt_tokens: int
    new_tokens: int
    settings: SleepSettings
    ingestion_seconds: float
    prompt_consolidations: int
    prompt_consolidation_seconds: float
    consolidations: int
    consolidation_seconds: float
    evictions: int
    tokens_consumed: int
    wake_seconds: list[float] = field(default_factory=list)

    @property
    def median_wake_seconds(self) -> float | None:
        return statistics.median(self.wake_seconds) if self.wake_seconds else None

    @property
    def amortised_consolidation_seconds(self) -> float:
        """Consolidation time spread over every token consumed (prompt and generated)."""
        return self.consolidation_seconds / self.tokens_consumed if self.tokens_consumed else 0.0


class _StepClock(LogitsProcessor):
    """Called by generate() once after every forward: records the time and the cache's
    consolidation totals, leaving the scores untouched."""

    def __init__(self, cache: SleepCache, bar: tqdm) -> None:
        self.cache, self.bar = cache, bar
        self.marks: list[tuple[float, int, float]] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        stats = self.cache.stats
        self.marks.append((time.perf_counter(), stats["consolidations"], stats["consolidation_seconds"]))
        self.bar.update()
        return scores


def timed_generate(
    model: SleepRetrofitForCausalLM,
    tokenizer,
    prompt: str,
    *,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    warmup: bool = True,
    progress: bool = True,
) -> GenerationReport:
    """Generate a completion of `prompt` with ``model.generate`` on a SleepCache of our own, and
    time prompt ingestion, consolidation and per-token wake decoding.

    Sampling (``do_sample``) draws from the whole vocabulary at ``temperature``; ``seed`` seeds it.
    With ``warmup`` the first 8 prompt tokens (at a window of 4: a wake pass, a consolidation)
    and one decode step are run once on a scratch cache before timing: the first calls of torch
    ops on CPU can be 10-100x slower than later ones and would otherwise dominate short runs.

    Raises:
        ConvertError: for an empty prompt, max_new_tokens < 1 or temperature <= 0.
    """
    if not isinstance(prompt, str) or not prompt:
        raise ConvertError("prompt must be a non-empty string")
    if not is_int(max_new_tokens) or max_new_tokens < 1:
        raise ConvertError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ConvertError(f"temperature must be > 0, got {temperature!r}")
    encoded = tokenizer(prompt, return_tensors="pt")
    input_ids = encoded["input_ids"]
    if input_ids.shape[1] == 0:
        raise ConvertError("prompt encodes to no tokens")
    if warmup:
        with torch.no_grad():
            # A few tokens at a tiny window exercise a wake pass, a consolidation and a decode
            # step without paying for a full N-pass chunk (2048 tokens x N on a real model).
            scratch = SleepCache(timed=True)
            head = input_ids[:, :8]
            model(head, cache=scratch, logits_to_keep=1, window=min(4, model.config.window))
            model(head[:, :1], cache=scratch, logits_to_keep=1, window=min(4, model.config.window))
    cache = SleepCache(timed=True)
    sampling = {"do_sample": True, "temperature": float(temperature), "top_k": 0, "top_p": 1.0}
    with (
        tqdm(
            total=max_new_tokens, desc="generate", unit="tok", disable=None if progress else True, leave=False
        ) as bar,
        quiet_transformers(),
    ):
        clock = _StepClock(cache, bar)
        torch.manual_seed(seed)
        began = time.perf_counter()
        output = model.generate(
            input_ids,
            attention_mask=encoded.get("attention_mask"),
            cache=cache,
            max_new_tokens=max_new_tokens,
            logits_processor=LogitsProcessorList([clock]),
            **(sampling if do_sample else {"do_sample": False}),
        )
    prompt_tokens = input_ids.shape[1]
    new_ids = output[0, prompt_tokens:]
    first_time, prompt_count, prompt_seconds = clock.marks[0]
    wake = []
    for (t0, _, c0), (t1, _, c1) in zip(clock.marks[:-1], clock.marks[1:], strict=True):
        wake.append((t1 - t0) - (c1 - c0))
    return GenerationReport(
        completion=tokenizer.decode(new_ids, skip_special_tokens=False),
        prompt_tokens=prompt_tokens,
        new_tokens=int(new_ids.numel()),
        settings=model.engine().settings,
        ingestion_seconds=first_time - began,
        prompt_consolidations=prompt_count,
        prompt_consolidation_seconds=prompt_seconds,
        consolidations=cache.stats["consolidations"],
        consolidation_seconds=cache.stats["consolidation_seconds"],
        evictions=cache.stats["evictions"],
        tokens_consumed=cache.seen_tokens,
        wake_seconds=wake,
    )
