"""Sleep on this machine: what N consolidation passes cost, what a woken token costs, how memory
grows with context, and what our wrapper costs over the plain transformers model.

    python benchmarks/bench_sleep.py               # full run (~6-9 min on 1 thread), updates BENCHMARKS.md
    python benchmarks/bench_sleep.py --quick       # smoke run (< 1 min), prints only
    python benchmarks/bench_sleep.py --threads 2   # torch intra-op threads (default 1)

The model is a small Llama-family decoder built from the config below with random weights
(hidden 256, 8 layers, 4 query / 2 key-value heads, MLP 688, vocab 2048), converted with the
family's default plan (a GDN block after layers 3 and 7) and hard eviction. The inserted
blocks' output projections, zero at conversion, are drawn at random (std 0.02) so the blocks
change the residual stream and their state matters. Everything runs in float32 under
torch.inference_mode(), batch 1.

What is measured (every ratio within one run, measurements of the things compared interleaved
so that load from other processes on this shared VM hits them alike):

- ingestion: `SleepEngine.forward` on a context of `--context` tokens with no output wanted,
  so every chunk of L tokens is consolidated with N passes and nothing else runs (no logits,
  no wake pass). Main figures with the loop body spanning the whole stack (as Ouro loops),
  where a chunk costs N stack passes and the ideal time ratio is N; also with the Llama
  family's default span (the middle half), whose ideal ratio the table derives from the
  parameters of the blocks that run once vs N times. Best of `--rounds` runs.
- wake decode: after a prompt of 2L tokens, `--decode-chunks` x L tokens fed one at a time
  through `SleepRetrofitForCausalLM.forward` (logits included), crossing as many evictions;
  the three caches (N = 1, 2, 4) advance in turn, one token each. Consolidation, which runs
  inside the step that fills a chunk, is taken from `SleepCache.stats` and subtracted from
  that step; it is reported per eviction and amortised over all decoded tokens.
- memory: one fresh process per (model, context), so that each peak is its own. After a
  warm-up the kernel's peak-RSS counter is reset (/proc/self/clear_refs = 5) and the
  process's peak RSS (VmHWM) and its growth over the warmed-up RSS are read after the
  prompt plus a few decoded tokens. The cache's own bytes are exact: SleepCache.memory_bytes()
  (keys/values, states, snapshot, chunk buffer) against the keys/values of transformers'
  DynamicCache. The sleep model reads the prompt in one forward call, as generate() does,
  and also streamed in pieces of L tokens; the full-attention baseline is the same base model
  (sdpa attention, DynamicCache) reading the prompt in one call, stopped where its quadratic
  prefill gets too slow (the table says where).
- wrapper overhead: per-token decode latency of our wrapper at N=1 with no inserted blocks and
  a window longer than prompt + decode (so the same math as the base model: checked, the
  largest logit difference is reported) against the plain transformers model of the same
  config and weights, interleaved token by token.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import hashlib
import io
import json
import pstats
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from bench_common import REPO, load_average, machine_info, progress, update_benchmarks_md
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

import sleep_retrofit
from sleep_retrofit.modeling import SleepRetrofitForCausalLM
from sleep_retrofit.retrofit import FastWeightPlan, default_plan
from sleep_retrofit.sleep import SleepCache, SleepSettings, family_adapter

# The base model: a small Llama-family decoder (design: "small but not trivial").
MODEL = dict(
    vocab_size=2048,
    hidden_size=256,
    intermediate_size=688,
    num_hidden_layers=8,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1 << 17,
)
PASSES = (1, 2, 4)
INSERTED_OUTPUT_STD = 0.02
DECODE_TOKENS_AFTER_PROMPT = 8  # memory runs: decode steps after the prompt
MIB = 1 << 20

# Targets (issue 4, item 8).
INGESTION_RATIO_RANGE = (3.5, 4.5)  # time N=4 / N=1
DECODE_RATIO_MAX = 1.05  # median per-token latency N=4 / N=1, consolidation excluded
MEMORY_RATIO_MAX = 1.1  # sleep peak at 64k / at 1k
WRAPPER_RATIO_MAX = 1.1  # our N=1 wrapper / plain transformers, per-token decode


# ----------------------------------------------------------------------------- machine


def rss_kib() -> tuple[int, int]:
    """(current RSS, peak RSS since the last reset) of this process, in KiB."""
    status = Path("/proc/self/status").read_text()
    current = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
    peak = int(re.search(r"VmHWM:\s+(\d+)", status).group(1))
    return current, peak


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter to the current RSS; False where it is not supported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# ----------------------------------------------------------------------------- models


def base_config(attn_implementation: str = "sdpa") -> LlamaConfig:
    config = LlamaConfig(**MODEL)
    config._attn_implementation = attn_implementation
    return config


def build_plain(seed: int, attn_implementation: str = "sdpa") -> LlamaForCausalLM:
    """The plain transformers model; the same `seed` gives the same weights."""
    torch.manual_seed(seed)
    return LlamaForCausalLM(base_config(attn_implementation)).eval()


def build_sleep(seed: int, window: int, loop_span: tuple[int, int]) -> SleepRetrofitForCausalLM:
    """The converted model: default plan, hard eviction, inserted blocks made non-trivial."""
    base = build_plain(seed)
    settings = SleepSettings(passes=1, window=window, eviction="hard", loop_span=loop_span)
    model = SleepRetrofitForCausalLM.from_base(base, plan=default_plan(base.config), settings=settings)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for block in model.fast_weights.values():
            for projection in block.output_projections():
                projection.weight.copy_(
                    torch.randn(projection.weight.shape, generator=generator) * INSERTED_OUTPUT_STD
                )
    return model.eval()


def build_wrapper(seed: int, window: int) -> SleepRetrofitForCausalLM:
    """Our wrapper with nothing inserted: with window >= context it computes the base model."""
    base = build_plain(seed)
    settings = SleepSettings(passes=1, window=window, eviction="hard")
    return SleepRetrofitForCausalLM.from_base(base, plan=FastWeightPlan("gdn", []), settings=settings).eval()


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def segment_parameters(model: SleepRetrofitForCausalLM, loop_span: tuple[int, int]) -> tuple[int, int, int]:
    """Parameters a consolidation pass runs once (prefix; suffix up to its last stateful block)
    and N times (body): the matmul work of one token, the basis of the ideal ingestion ratio."""
    stack = model.engine(loop_span=loop_span).stack

    def params(blocks) -> int:
        return sum(count_parameters(b.layer if hasattr(b, "layer") else b.module) for b in blocks)

    last = max((i for i, b in enumerate(stack.suffix) if b.stateful), default=-1)
    return params(stack.prefix), params(stack.body), params(stack.suffix[: last + 1])


def random_ids(length: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, MODEL["vocab_size"], (1, length), generator=generator)


def file_digests(paths: set[str]) -> dict[str, str]:
    return {path: hashlib.sha256(Path(path).read_bytes()).hexdigest() for path in sorted(paths)}


def check_engine(model: SleepRetrofitForCausalLM, window: int) -> set[str]:
    """Consolidating one chunk must run the loop body N times (the ingestion ratios only mean
    something if it does); then a prompt and a decoded token. Returns the package source files
    that ran, so the caller can tell whether they changed under the benchmark (other engineers
    edit the tree while it runs)."""
    package = str(Path(sleep_retrofit.__file__).resolve().parent)
    executed: set[str] = set()
    calls = 0

    def count(*_):
        nonlocal calls
        calls += 1

    def record(frame, event, _):
        if event == "call" and frame.f_code.co_filename.startswith(package):
            executed.add(frame.f_code.co_filename)

    span = model.engine().settings.loop_span or (0, MODEL["num_hidden_layers"])
    hook = model.base.model.layers[span[0]].register_forward_hook(count)
    sys.setprofile(record)
    try:
        with torch.inference_mode():
            for passes in PASSES:
                calls = 0
                engine = model.engine(passes=passes)
                embeds = engine.stack.embed(random_ids(window, 0))
                nothing = torch.zeros(window, dtype=torch.bool)
                engine.forward(embeds, engine.new_cache(), output_positions=nothing)
                if calls != passes:
                    raise RuntimeError(f"consolidation at N={passes} ran the loop body {calls} times")
            cache = SleepCache()
            model(random_ids(window + 3, 1), cache=cache, passes=2, logits_to_keep=1)
            model(random_ids(1, 2), cache=cache, passes=2)
    finally:
        sys.setprofile(None)
        hook.remove()
    return executed


def held_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of the storages behind `tensors` (a view keeps its whole storage alive)."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def cache_retention(model: SleepRetrofitForCausalLM, prompt: int) -> dict[str, int]:
    """After one forward call over a prompt that ends mid-chunk: what SleepCache.memory_bytes()
    reports against the bytes of the storages the cache actually keeps alive."""
    cache = SleepCache()
    model(random_ids(prompt, 5), cache=cache, logits_to_keep=1)
    states = [t for d in (cache.states, cache.snapshot) for s in d.values() for t in (s.recurrent, *s.conv)]
    kv = list(cache.keys.values()) + list(cache.values.values())
    chunk = [cache.chunk_embeds] if cache.chunk_embeds is not None else []
    return {
        "prompt": prompt,
        "chunk_fill": cache.chunk_fill,
        "memory_bytes": cache.memory_bytes(),
        "held": held_bytes(states + kv + chunk),
        "held_states": held_bytes(states),
        "reported_states": sum(t.numel() * t.element_size() for t in {id(t): t for t in states}.values()),
        "held_chunk": held_bytes(chunk),
        "reported_chunk": sum(t.numel() * t.element_size() for t in chunk),
    }


# ----------------------------------------------------------------------------- ingestion


@dataclass
class IngestionResult:
    span_name: str
    loop_span: tuple[int, int]
    seconds: dict[int, list[float]] = field(default_factory=dict)
    ideal: dict[int, float] = field(default_factory=dict)


def bench_ingestion(
    model: SleepRetrofitForCausalLM, spans: dict[str, tuple[int, int]], context: int, rounds: int, seed: int
) -> list[IngestionResult]:
    """Best-of-`rounds` time of SleepEngine.forward over `context` tokens, nothing output."""
    ids = random_ids(context, seed)
    nothing = torch.zeros(context, dtype=torch.bool)
    window = model.config.window
    results = []
    for name, span in spans.items():
        prefix, body, suffix = segment_parameters(model, span)
        result = IngestionResult(name, span, {n: [] for n in PASSES})
        result.ideal = {n: (prefix + n * body + suffix) / (prefix + body + suffix) for n in PASSES}
        results.append(result)
    jobs = [(result, n) for result in results for n in PASSES]
    for round_index in range(rounds):
        # Rotate the order each round so no setting is always measured first or last.
        shift = round_index % len(jobs)
        for result, passes in jobs[shift:] + jobs[:shift]:
            engine = model.engine(passes=passes, loop_span=result.loop_span)
            embeds = engine.stack.embed(ids)
            cache = engine.new_cache()
            gc.collect()
            began = time.perf_counter()
            engine.forward(embeds, cache, output_positions=nothing)
            result.seconds[passes].append(time.perf_counter() - began)
            expected = context // window
            if cache.stats["consolidations"] != expected:
                raise RuntimeError(
                    f"expected {expected} consolidations, the cache counted {cache.stats['consolidations']}"
                )
        progress(f"ingestion round {round_index + 1}/{rounds} done")
    return results


# ----------------------------------------------------------------------------- decode


@dataclass
class DecodeResult:
    passes: int
    step_seconds: list[float] = field(default_factory=list)  # consolidation excluded
    consolidation_events: list[float] = field(default_factory=list)  # seconds per consolidating eviction
    evictions: int = 0
    consolidations: int = 0
    total_seconds: float = 0.0  # everything, consolidation included


def bench_decode(
    model: SleepRetrofitForCausalLM, prompt: int, steps: int, seed: int
) -> dict[int, DecodeResult]:
    """Per-token wake latency for N = 1, 2, 4, the three caches advancing in turn."""
    ids = random_ids(prompt + steps, seed)
    caches, results = {}, {}
    for passes in PASSES:
        caches[passes] = SleepCache(timed=True)
        model(ids[:, :prompt], cache=caches[passes], passes=passes, logits_to_keep=1)
        results[passes] = DecodeResult(passes)
    start_stats = {n: dict(c.stats) for n, c in caches.items()}
    gc.collect()
    for step in range(steps):
        token = ids[:, prompt + step : prompt + step + 1]
        order = PASSES[step % len(PASSES) :] + PASSES[: step % len(PASSES)]
        for passes in order:
            cache, result = caches[passes], results[passes]
            consolidated_before = cache.stats["consolidation_seconds"]
            began = time.perf_counter()
            model(token, cache=cache, passes=passes)
            elapsed = time.perf_counter() - began
            consolidation = cache.stats["consolidation_seconds"] - consolidated_before
            if consolidation > 0:
                result.consolidation_events.append(consolidation)
            result.step_seconds.append(elapsed - consolidation)
            result.total_seconds += elapsed
    for passes, result in results.items():
        result.evictions = caches[passes].stats["evictions"] - start_stats[passes]["evictions"]
        result.consolidations = caches[passes].stats["consolidations"] - start_stats[passes]["consolidations"]
    return results


# ----------------------------------------------------------------------------- wrapper overhead


@dataclass
class WrapperResult:
    step_seconds: dict[str, list[float]]
    max_logit_difference: float
    wrapper_attention: str


def bench_wrapper(seed: int, prompt: int, steps: int) -> WrapperResult:
    """Our N=1 wrapper (nothing inserted, window > prompt + steps) vs the plain model, token by token."""
    window = 1 << max(prompt + steps, 1).bit_length()
    models = {
        "plain transformers (sdpa)": build_plain(seed, "sdpa"),
        "plain transformers (eager)": build_plain(seed, "eager"),
        "sleep wrapper, N=1": build_wrapper(seed, window),
    }
    wrapper_attention = str(models["sleep wrapper, N=1"].base.config._attn_implementation)
    ids = random_ids(prompt + steps, seed + 7)
    caches: dict[str, object] = {}
    for name, model in models.items():
        caches[name] = SleepCache() if isinstance(model, SleepRetrofitForCausalLM) else DynamicCache()
        model(ids[:, :prompt], cache=caches[name], logits_to_keep=1)
    names = list(models)
    step_seconds: dict[str, list[float]] = {name: [] for name in names}
    max_difference = 0.0
    gc.collect()
    for step in range(steps):
        token = ids[:, prompt + step : prompt + step + 1]
        logits = {}
        for name in names[step % len(names) :] + names[: step % len(names)]:
            began = time.perf_counter()
            logits[name] = models[name](token, cache=caches[name]).logits
            step_seconds[name].append(time.perf_counter() - began)
        reference = logits["plain transformers (sdpa)"]
        max_difference = max(max_difference, (logits["sleep wrapper, N=1"] - reference).abs().max().item())
    return WrapperResult(step_seconds, max_difference, wrapper_attention)


def profile_wrapper(seed: int, prompt: int, steps: int, top: int = 12) -> str:
    """cProfile of the wrapper's and the plain model's decode steps: where the difference goes."""
    window = 1 << max(prompt + steps, 1).bit_length()
    ids = random_ids(prompt + steps, seed + 7)
    lines = []
    for name, model, cache in (
        ("plain transformers (sdpa)", build_plain(seed, "sdpa"), DynamicCache()),
        ("sleep wrapper, N=1", build_wrapper(seed, window), SleepCache()),
    ):
        model(ids[:, :prompt], cache=cache, logits_to_keep=1)
        profiler = cProfile.Profile()
        profiler.enable()
        for step in range(steps):
            model(ids[:, prompt + step : prompt + step + 1], cache=cache)
        profiler.disable()
        stream = io.StringIO()
        stats = pstats.Stats(profiler, stream=stream)
        lines.append(f"{name}: {stats.total_tt / steps * 1e3:.2f} ms/token under cProfile; top self times:")
        entries = sorted(stats.stats.items(), key=lambda item: item[1][2], reverse=True)[:top]
        for (filename, line, function), (_, calls, self_time, _, _) in entries:
            where = filename.split("site-packages/")[-1].split("/work/main/")[-1]
            lines.append(
                f"    {self_time / steps * 1e3:6.3f} ms/token  {calls // steps:4d} calls  "
                f"{function} ({where}:{line})"
            )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- memory


def measure_memory(worker: str, feed: str, context: int, args: argparse.Namespace) -> dict:
    """Peak RSS and cache bytes of one model reading `context` tokens (+ a few decoded ones)."""
    window = args.window
    if worker == "full":
        model = build_plain(args.seed, "sdpa")

        def new_cache():
            return DynamicCache()

        def cache_bytes(cache) -> int:
            return sum(
                t.numel() * t.element_size()
                for layer in cache.layers
                for t in (getattr(layer, "keys", None), getattr(layer, "values", None))
                if isinstance(t, torch.Tensor)
            )

        def attention_tokens(cache) -> int:
            return cache.get_seq_length()

        def run(ids, cache, **kwargs):
            return model(ids, cache=cache, **kwargs)
    else:
        model = build_sleep(args.seed, window, tuple(args.loop_span))

        def new_cache():
            return SleepCache()

        def cache_bytes(cache) -> int:
            return cache.memory_bytes()

        def attention_tokens(cache) -> int:
            return cache.attention_tokens

        def run(ids, cache, **kwargs):
            return model(ids, cache=cache, passes=args.memory_passes, **kwargs)

    def consume(length: int, streamed: bool) -> tuple[int, int, float]:
        ids = random_ids(length + DECODE_TOKENS_AFTER_PROMPT, args.seed + 3)
        cache = new_cache()
        began = time.perf_counter()
        largest, tokens = 0, 0
        pieces = range(0, length, window) if streamed else [0]
        for start in pieces:
            stop = min(length, start + window) if streamed else length
            run(ids[:, start:stop], cache, logits_to_keep=1)
            largest, tokens = max(largest, cache_bytes(cache)), max(tokens, attention_tokens(cache))
        seconds = time.perf_counter() - began
        for step in range(DECODE_TOKENS_AFTER_PROMPT):
            run(ids[:, length + step : length + step + 1], cache)
            largest, tokens = max(largest, cache_bytes(cache)), max(tokens, attention_tokens(cache))
        return largest, tokens, seconds

    with torch.inference_mode():
        consume(2 * window, feed == "streamed")  # warm-up: every code path allocated once
        gc.collect()
        resettable = reset_peak_rss()
        before, _ = rss_kib()
        largest, tokens, seconds = consume(context, feed == "streamed")
        _, peak = rss_kib()
    return {
        "peak_rss_kib": peak,
        "warm_rss_kib": before,
        "peak_is_since_reset": resettable,
        "cache_bytes": largest,
        "attention_tokens": tokens,
        "prompt_seconds": seconds,
    }


def memory_worker(args: argparse.Namespace) -> None:
    """One measurement in a fresh process, so that its peak is its own; prints a JSON line."""
    print(json.dumps(measure_memory(args.worker, args.feed, args.context, args)))


def run_memory_worker(worker: str, feed: str, context: int, args: argparse.Namespace) -> dict:
    """measure_memory in a fresh process (--quick: in this one, to save the start-up time; its
    peaks then share the allocator with the earlier measurements and are indicative only)."""
    if args.quick:
        return measure_memory(worker, feed, context, args)
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        worker,
        "--feed",
        feed,
        "--context",
        str(context),
        "--window",
        str(args.window),
        "--threads",
        str(args.threads),
        "--seed",
        str(args.seed),
        "--memory-passes",
        str(args.memory_passes),
        "--loop-span",
        *map(str, args.loop_span),
    ]
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"memory worker {worker} {context} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- report


def paired_ratio(times: list[float], reference: list[float]) -> float:
    """Median over steps of times[i] / reference[i]: both were measured back to back."""
    return statistics.median(a / b for a, b in zip(times, reference, strict=True))


def fmt_ratio(value: float) -> str:
    return f"{value:.2f}x"


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def report(
    info: dict[str, str],
    args: argparse.Namespace,
    model: SleepRetrofitForCausalLM,
    ingestion: list[IngestionResult],
    decode: dict[int, DecodeResult],
    memory: dict[tuple[str, str, int], dict],
    memory_skipped: dict[int, str],
    wrapper: WrapperResult,
    wrapper_profile: str | None,
    retention: dict[str, int],
) -> tuple[str, dict[str, float]]:
    lines = ["### Machine", ""]
    lines += [f"- {key}: {value}" for key, value in info.items()]
    base_params = count_parameters(model.base)
    inserted_params = count_parameters(model.fast_weights)
    plan = model.config.plan()
    lines += [
        "",
        "### Model",
        "",
        f"- base: LlamaForCausalLM, random weights, {json.dumps(MODEL)}: "
        f"{base_params / 1e6:.2f} M parameters",
        f"- inserted: {plan.kind} blocks after layers {plan.insert_after} (default plan; "
        f"{plan.mixer_kwargs}), +{inserted_params / 1e6:.2f} M parameters "
        f"({100 * inserted_params / base_params:.1f}%), output projections drawn with std "
        f"{INSERTED_OUTPUT_STD}",
        f"- sleep: window L = {args.window}, hard eviction, loop span {list(args.loop_span)} "
        f"(the whole stack) unless stated; float32, batch 1, torch.inference_mode()",
        f"- attention implementation seen by the wrapped base layers: {wrapper.wrapper_attention} "
        "(the plain baseline runs sdpa, transformers' default)",
    ]
    targets: dict[str, float] = {}

    # ingestion
    lines += [
        "",
        f"### Ingestion ({args.context} tokens, {args.context // args.window} chunks of {args.window}, "
        f"SleepEngine.forward, nothing output; best of {args.rounds})",
        "",
        "| loop span | N | seconds | tokens/s | time / time at N=1 | ideal | vs ideal |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for result in ingestion:
        best = {n: min(s) for n, s in result.seconds.items()}
        for passes in PASSES:
            ratio = best[passes] / best[1]
            lines.append(
                f"| {result.span_name} {list(result.loop_span)} | {passes} | {best[passes]:.2f} | "
                f"{args.context / best[passes]:,.0f} | {fmt_ratio(ratio)} | "
                f"{fmt_ratio(result.ideal[passes])} | "
                f"{ratio / result.ideal[passes]:.2f} |"
            )
            if result is ingestion[0]:
                targets[f"ingestion N={passes}/N=1"] = ratio
    whole = {n: min(t) / (args.context // args.window) for n, t in ingestion[0].seconds.items()}
    mean_n, mean_t = statistics.fmean(PASSES), statistics.fmean(whole.values())
    per_pass = sum((n - mean_n) * (whole[n] - mean_t) for n in PASSES) / sum(
        (n - mean_n) ** 2 for n in PASSES
    )
    fixed = mean_t - per_pass * mean_n
    lines.append("")
    lines.append(
        f"Whole stack, per chunk of {args.window}: least-squares fit time = {fixed * 1e3:.1f} ms + N x "
        f"{per_pass * 1e3:.1f} ms (the fixed part is the per-chunk work that does not repeat with N: "
        "masks, rotary, bookkeeping; near zero, the ratio is N)."
    )
    lines.append(
        "Ideal: (prefix + N x body + suffix up to its last fast-weight block) / (the same at N=1), "
        "counted in parameters (the per-token matmul work); the whole-stack span's ideal is N."
    )

    # decode
    decode_tokens = len(decode[1].step_seconds)
    lines += [
        "",
        f"### Wake decode ({decode_tokens} tokens one at a time after a {2 * args.window}-token prompt, "
        "SleepRetrofitForCausalLM.forward with logits)",
        "",
        "| N | median ms/token (consolidation excluded) | p90 ms/token | vs N=1 (paired) | evictions "
        "| consolidations | consolidation s per eviction | consolidation ms amortised per token "
        "| mean ms/token, all included |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for passes in PASSES:
        result = decode[passes]
        median = statistics.median(result.step_seconds)
        p90 = sorted(result.step_seconds)[int(0.9 * (len(result.step_seconds) - 1))]
        consolidation = sum(result.consolidation_events)
        per_eviction = consolidation / result.evictions if result.evictions else 0.0
        ratio = paired_ratio(result.step_seconds, decode[1].step_seconds)
        targets[f"decode N={passes}/N=1"] = ratio
        lines.append(
            f"| {passes} | {median * 1e3:.2f} | {p90 * 1e3:.2f} | {ratio:.3f} | "
            f"{result.evictions} | {result.consolidations} | {per_eviction:.3f} | "
            f"{consolidation / decode_tokens * 1e3:.2f} | {result.total_seconds / decode_tokens * 1e3:.2f} |"
        )
    lines.append("")
    lines.append(
        "vs N=1 (paired): the median over tokens of this N's latency / N=1's latency for the same token "
        "(measured back to back), which cancels the slow phases other processes cause; the medians alone "
        "drift with the load."
    )
    lines.append(
        "At N=1 a fully woken chunk is not re-run at eviction (its wake passes were its one pass), "
        "so N=1 evicts without consolidating."
    )

    # memory
    contexts = sorted({key[2] for key in memory} | set(memory_skipped))
    where = "in this process (--quick: indicative only)" if args.quick else "one process per cell"
    lines += [
        "",
        f"### Peak memory (prompt + {DECODE_TOKENS_AFTER_PROMPT} decoded tokens; {where}; "
        f"sleep at N={args.memory_passes}, L={args.window}, hard eviction)",
        "",
        "Process peak RSS (MiB) / its growth over the warmed-up process (MiB) / the cache's own bytes (MiB, "
        "the largest held at any step).",
        "",
        "| context | sleep, one call: peak | growth | SleepCache | sleep, streamed by L: peak | growth "
        "| SleepCache | full attention (DynamicCache): peak | growth | DynamicCache "
        "| prompt s (sleep one call / full) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]

    def cells(key) -> list[str]:
        m = memory.get(key)
        if m is None:
            return ["-", "-", "-"]
        return [
            f"{m['peak_rss_kib'] / 1024:.0f}",
            f"{(m['peak_rss_kib'] - m['warm_rss_kib']) / 1024:.1f}",
            f"{m['cache_bytes'] / MIB:.2f}",
        ]

    for context in contexts:
        one = memory.get(("sleep", "one-call", context))
        full = memory.get(("full", "one-call", context))
        seconds = f"{one['prompt_seconds']:.1f}" if one else "-"
        seconds += " / " + (f"{full['prompt_seconds']:.1f}" if full else memory_skipped.get(context, "-"))
        lines.append(
            f"| {context:,} | "
            + " | ".join(
                cells(("sleep", "one-call", context))
                + cells(("sleep", "streamed", context))
                + cells(("full", "one-call", context))
            )
            + f" | {seconds} |"
        )
    low, high = min(contexts), max(contexts)
    for feed in ("one-call", "streamed"):
        a, b = memory.get(("sleep", feed, low)), memory.get(("sleep", feed, high))
        if a and b:
            targets[f"memory {feed} peak {high}/{low}"] = b["peak_rss_kib"] / a["peak_rss_kib"]
            targets[f"memory {feed} growth {high}/{low}"] = (b["peak_rss_kib"] - b["warm_rss_kib"]) / max(
                1, a["peak_rss_kib"] - a["warm_rss_kib"]
            )
            targets[f"memory {feed} cache {high}/{low}"] = b["cache_bytes"] / a["cache_bytes"]
    per_token = 2 * MODEL["num_hidden_layers"] * MODEL["num_key_value_heads"]
    per_token *= MODEL["hidden_size"] // MODEL["num_attention_heads"] * 4
    lines.append("")
    lines.append(
        f"DynamicCache holds {per_token // 1024} KiB per token (2 x {MODEL['num_hidden_layers']} layers x "
        f"{MODEL['num_key_value_heads']} kv heads x {MODEL['hidden_size'] // MODEL['num_attention_heads']} "
        f"x 4 B): {per_token * high / MIB:.0f} MiB at {high:,} tokens."
        + (
            f" Full attention not run at {', '.join(f'{c:,}' for c in memory_skipped)}: "
            if memory_skipped
            else ""
        )
        + ("; ".join(sorted(set(memory_skipped.values()))) if memory_skipped else "")
    )

    one_high, streamed_high = memory.get(("sleep", "one-call", high)), memory.get(("sleep", "streamed", high))
    if one_high and streamed_high:
        extra = (one_high["peak_rss_kib"] - streamed_high["peak_rss_kib"]) / 1024
        embeds = high * MODEL["hidden_size"] * 4 / MIB
        lines.append(
            f"At {high:,} tokens the one-call prompt peaks {extra:.0f} MiB above the streamed one; the "
            "prompt's input embeddings, made in one piece before the engine cuts chunks, are "
            f"{embeds:.0f} MiB ({MODEL['hidden_size']} x 4 B per token)."
        )
    lines += [
        "",
        f"After one forward call over {retention['prompt']:,} tokens (ending {retention['chunk_fill']} "
        "tokens into a chunk), SleepCache.memory_bytes() reports "
        f"{retention['memory_bytes'] / MIB:.2f} MiB; the "
        f"storages it keeps alive hold {retention['held'] / MIB:.2f} MiB: chunk buffer "
        f"{retention['reported_chunk'] / MIB:.2f} MiB reported, "
        f"{retention['held_chunk'] / MIB:.2f} MiB held; "
        f"fast-weight states and snapshot {retention['reported_states'] / MIB:.2f} MiB reported, "
        f"{retention['held_states'] / MIB:.2f} MiB held (views keep their whole storage).",
    ]

    # wrapper
    names = list(wrapper.step_seconds)
    medians = {name: statistics.median(s) for name, s in wrapper.step_seconds.items()}
    lines += [
        "",
        f"### Wrapper overhead ({len(wrapper.step_seconds[names[0]])} tokens decoded after a "
        f"{args.wrapper_prompt}-token prompt, interleaved; no inserted blocks, window > context)",
        "",
        "| model | median ms/token | vs plain (sdpa), paired |",
        "|---|---:|---:|",
    ]
    plain = wrapper.step_seconds["plain transformers (sdpa)"]
    for name in names:
        ratio = paired_ratio(wrapper.step_seconds[name], plain)
        lines.append(f"| {name} | {medians[name] * 1e3:.2f} | {fmt_ratio(ratio)} |")
    ours = wrapper.step_seconds["sleep wrapper, N=1"]
    targets["wrapper/plain sdpa"] = paired_ratio(ours, plain)
    targets["wrapper/plain eager"] = paired_ratio(ours, wrapper.step_seconds["plain transformers (eager)"])
    lines.append("")
    lines.append(
        "Largest |logit difference| wrapper vs plain over the decoded tokens: "
        f"{wrapper.max_logit_difference:.2e}."
    )

    # targets
    ingest = targets["ingestion N=4/N=1"]
    decode_ratio = targets["decode N=4/N=1"]
    lines += ["", "### Targets", ""]
    lines.append(
        f"- ingestion time N=4 / N=1 in [{INGESTION_RATIO_RANGE[0]}, {INGESTION_RATIO_RANGE[1]}] "
        f"(whole-stack loop): {ingest:.2f}, "
        f"{verdict(INGESTION_RATIO_RANGE[0] <= ingest <= INGESTION_RATIO_RANGE[1])} "
        f"(N=2 / N=1: {targets['ingestion N=2/N=1']:.2f})"
    )
    lines.append(
        f"- wake decode median N=4 / N=1 <= {DECODE_RATIO_MAX} (consolidation excluded): {decode_ratio:.3f}, "
        f"{verdict(decode_ratio <= DECODE_RATIO_MAX)} (N=2 / N=1: {targets['decode N=2/N=1']:.3f})"
    )
    for feed in ("one-call", "streamed"):
        key = f"memory {feed} peak {high}/{low}"
        if key in targets:
            lines.append(
                f"- sleep peak memory {high:,} / {low:,} tokens <= {MEMORY_RATIO_MAX}, prompt {feed}: "
                "process "
                f"peak {targets[key]:.3f}, {verdict(targets[key] <= MEMORY_RATIO_MAX)}; peak growth over the "
                f"warm process {targets[f'memory {feed} growth {high}/{low}']:.2f}x; SleepCache bytes "
                f"{targets[f'memory {feed} cache {high}/{low}']:.2f}x"
            )
    wrapper_ratio = targets["wrapper/plain sdpa"]
    lines.append(
        f"- wrapper overhead (N=1, per-token decode) <= {WRAPPER_RATIO_MAX}x the plain model: "
        f"{wrapper_ratio:.2f}x, {verdict(wrapper_ratio <= WRAPPER_RATIO_MAX)} "
        f"(against plain eager attention: {targets['wrapper/plain eager']:.2f}x)"
    )
    if wrapper_profile:
        lines += [
            "",
            "Profile of the decode steps (wrapper target missed):",
            "",
            "```",
            wrapper_profile,
            "```",
        ]
    return "\n".join(lines) + "\n", targets


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run (< 1 min): small sizes, no file update"
    )
    parser.add_argument("--window", type=int, default=None, help="L (default 256; quick 64)")
    parser.add_argument(
        "--context", type=int, default=None, help="ingestion tokens (default 4096; quick 512)"
    )
    parser.add_argument("--rounds", type=int, default=None, help="ingestion repeats (default 3; quick 1)")
    parser.add_argument(
        "--decode-chunks", type=int, default=None, help="decode L x this many tokens (default 3)"
    )
    parser.add_argument("--wrapper-prompt", type=int, default=None, help="wrapper prompt (default 512)")
    parser.add_argument("--wrapper-steps", type=int, default=None, help="wrapper decode tokens (default 256)")
    parser.add_argument(
        "--memory-contexts", type=int, nargs="+", default=None, help="default 1024 4096 16384 65536"
    )
    parser.add_argument(
        "--full-attention-max",
        type=int,
        default=None,
        help="largest context for the baseline (default 16384)",
    )
    parser.add_argument("--memory-passes", type=int, default=2, help="N in the memory runs (default 2)")
    parser.add_argument("--loop-span", type=int, nargs=2, default=None, help="default: the whole stack")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    parser.add_argument("--output", type=Path, default=REPO / "BENCHMARKS.md")
    # internal: one memory measurement in a fresh process
    parser.add_argument("--worker", choices=("sleep", "full"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--feed", choices=("one-call", "streamed"), default="one-call", help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)

    quick = args.quick
    args.window = args.window or (64 if quick else 256)
    args.context = args.context or (512 if quick else 4096)
    args.rounds = args.rounds or (1 if quick else 3)
    args.decode_chunks = args.decode_chunks or (2 if quick else 3)
    args.wrapper_prompt = args.wrapper_prompt or (64 if quick else 512)
    args.wrapper_steps = args.wrapper_steps or (32 if quick else 256)
    args.memory_contexts = args.memory_contexts or ([512, 1024] if quick else [1024, 4096, 16384, 65536])
    args.full_attention_max = args.full_attention_max or (1024 if quick else 16384)
    args.loop_span = tuple(args.loop_span or (0, MODEL["num_hidden_layers"]))
    if args.context % args.window:
        raise ValueError(f"--context must be a multiple of --window ({args.window}), got {args.context}")

    torch.set_num_threads(args.threads)
    if args.worker:
        memory_worker(args)
        return

    info = machine_info(
        args.threads,
        threads_note="torch.set_num_threads, also in the memory worker processes",
        versions={"transformers": transformers.__version__},
    )
    model = build_sleep(args.seed, args.window, args.loop_span)
    default_span = family_adapter(model.engine().stack.family).default_loop_span(MODEL["num_hidden_layers"])
    sources = file_digests(check_engine(model, args.window))
    with torch.inference_mode():
        progress("ingestion")
        spans = {"whole stack": args.loop_span}
        if default_span != args.loop_span:
            spans["family default"] = default_span
        ingestion = bench_ingestion(model, spans, args.context, args.rounds, args.seed)
        progress("wake decode")
        decode = bench_decode(model, 2 * args.window, args.decode_chunks * args.window, args.seed + 1)
        progress("wrapper overhead")
        wrapper = bench_wrapper(args.seed, args.wrapper_prompt, args.wrapper_steps)
    memory: dict[tuple[str, str, int], dict] = {}
    memory_skipped: dict[int, str] = {}
    for context in args.memory_contexts:
        progress(f"memory at {context} tokens")
        memory[("sleep", "one-call", context)] = run_memory_worker("sleep", "one-call", context, args)
        if not quick:
            memory[("sleep", "streamed", context)] = run_memory_worker("sleep", "streamed", context, args)
        if context <= args.full_attention_max:
            memory[("full", "one-call", context)] = run_memory_worker("full", "one-call", context, args)
        else:
            last = max(c for c in args.memory_contexts if c <= args.full_attention_max)
            seconds = memory[("full", "one-call", last)]["prompt_seconds"] * (context / last) ** 2
            memory_skipped[context] = f"quadratic prefill, ~{seconds:.0f} s predicted from {last:,} tokens"

    wrapper_profile = None
    wrapper_ratio = paired_ratio(
        wrapper.step_seconds["sleep wrapper, N=1"], wrapper.step_seconds["plain transformers (sdpa)"]
    )
    if wrapper_ratio > WRAPPER_RATIO_MAX:
        progress("profiling the wrapper")
        with torch.inference_mode():
            wrapper_profile = profile_wrapper(args.seed, args.wrapper_prompt, min(64, args.wrapper_steps))
    with torch.inference_mode():
        progress("what a cache holds after a prompt that ends mid-chunk")
        retention = cache_retention(
            model, 32 * args.window + args.window // 2 if not quick else 4 * args.window + 7
        )
    info["load average at end"] = load_average()

    body, _ = report(
        info, args, model, ingestion, decode, memory, memory_skipped, wrapper, wrapper_profile, retention
    )
    print(body)
    changed = [path for path, digest in file_digests(set(sources)).items() if sources[path] != digest]
    if changed:
        raise SystemExit(
            f"not written: {', '.join(changed)} changed while the benchmark ran, so the figures mix two "
            "versions of the code. Run it again."
        )
    if not (quick or args.no_write):
        command = " ".join(
            ["python", "benchmarks/bench_sleep.py", *(argv if argv is not None else sys.argv[1:])]
        )
        update_benchmarks_md(args.output, "bench_sleep", "Sleep", body, command)
        print(f"updated {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
