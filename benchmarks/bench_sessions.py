"""The bill of sessions: ingest a document once with N passes and answer 20 questions from its
saved state, against re-reading the document for every question (sleep_retrofit.sessions).

    python benchmarks/bench_sessions.py [--document-tokens 2048] [--questions 20] [--passes 1 2 4]

Per N: ingestion tokens/s, the median latency of one question (its 32 tokens read + 16 answer
tokens generated, greedy), and the whole bill of 20 questions both ways, measured in the same
run. The model is bench_sleep.py's (a random Llama of 6.9M parameters, GDN blocks inserted,
L = 256, hard eviction), one torch thread. Results: BENCHMARKS.md, section "Sessions".
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_common import REPO, load_average, machine_info, progress, update_benchmarks_md
from transformers import LlamaConfig, LlamaForCausalLM

from sleep_retrofit.modeling import SleepRetrofitForCausalLM
from sleep_retrofit.retrofit import default_plan
from sleep_retrofit.sleep import SleepSettings

BASE = {
    "vocab_size": 2048,
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 8,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 131072,
}
WINDOW, QUESTION_TOKENS, ANSWER_TOKENS = 256, 32, 16


def build_model() -> SleepRetrofitForCausalLM:
    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(**BASE))
    model = SleepRetrofitForCausalLM.from_base(
        base, plan=default_plan(base.config), settings=SleepSettings(passes=1, window=WINDOW)
    )
    with torch.no_grad():  # blocks that are not the identity, so consolidation has work to show
        for name, param in model.named_parameters():
            if name.startswith("fast_weights.") and name.endswith("o_proj.weight"):
                param.normal_(std=0.02)
    return model.eval()


def answer(model, ids: torch.Tensor, **kwargs) -> float:
    began = time.perf_counter()
    with torch.inference_mode():
        model.generate(
            ids, max_new_tokens=ANSWER_TOKENS, min_new_tokens=ANSWER_TOKENS, do_sample=False, **kwargs
        )
    return time.perf_counter() - began


def measure(model, document: torch.Tensor, questions: list[torch.Tensor], passes: int) -> dict[str, float]:
    began = time.perf_counter()
    with torch.inference_mode():
        state = model.ingest(document, passes=passes)
    ingest = time.perf_counter() - began
    from_state = [answer(model, q, sleep_state=state) for q in questions]
    rereading = [answer(model, torch.cat([document[None], q], dim=1), passes=passes) for q in questions]
    return {
        "ingest_seconds": ingest,
        "tokens_per_second": document.numel() / ingest,
        "question_from_state": statistics.median(from_state),
        "question_rereading": statistics.median(rereading),
        "bill_sessions": ingest + sum(from_state),
        "bill_rereading": sum(rereading),
        "state_bytes": state.cache.memory_bytes(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--document-tokens", type=int, default=2048)
    parser.add_argument("--questions", type=int, default=20)
    parser.add_argument("--passes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import transformers

    machine = machine_info(1, versions={"transformers": transformers.__version__})
    model = build_model()
    generator = torch.Generator().manual_seed(1)
    document = torch.randint(3, BASE["vocab_size"], (args.document_tokens,), generator=generator)
    questions = [
        torch.randint(3, BASE["vocab_size"], (1, QUESTION_TOKENS), generator=generator)
        for _ in range(args.questions)
    ]
    answer(model, questions[0][:, :8])  # warm-up
    rows = []
    for passes in args.passes:
        progress(f"N={passes}")
        result = measure(model, document, questions, passes)
        rows.append(
            f"| {passes} | {result['tokens_per_second']:,.0f} | {result['ingest_seconds']:.2f} "
            f"| {result['question_from_state'] * 1000:.0f} | {result['question_rereading'] * 1000:.0f} "
            f"| {result['bill_sessions']:.1f} | {result['bill_rereading']:.1f} "
            f"| {result['bill_rereading'] / result['bill_sessions']:.1f}x "
            f"| {result['state_bytes'] / 2**20:.2f} |"
        )
    machine["load average at end"] = load_average()
    chunks = args.document_tokens // WINDOW
    body = "\n".join(
        [
            "### Machine",
            "",
            *[f"- {k}: {v}" for k, v in machine.items()],
            "",
            f"One document of {args.document_tokens:,} tokens ({chunks} chunks of L = {WINDOW}, hard "
            "eviction), "
            f"{args.questions} questions of {QUESTION_TOKENS} tokens, {ANSWER_TOKENS} answer tokens each "
            "(greedy), batch 1, float32, bench_sleep.py's model (random Llama, 6.9M parameters, GDN blocks). "
            "Sessions: `state = model.ingest(document, passes=N)` once, then "
            "`model.generate(question, sleep_state=state)` per question. Re-reading: "
            "`model.generate(document + question, passes=N)` per question. Latencies are medians "
            "over the questions; bills are sums (sessions: ingestion included).",
            "",
            "| N | ingestion tokens/s | ingestion s | question from state, ms | question re-reading, ms "
            "| bill, sessions, s | bill, re-reading, s | re-reading / sessions | state MiB |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            *rows,
            "",
        ]
    )
    print(body)
    if not args.no_write:
        update_benchmarks_md(
            REPO / "BENCHMARKS.md", "bench_sessions", "Sessions: ingest once, ask many", body,
            "python benchmarks/bench_sessions.py",
        )  # fmt: skip


if __name__ == "__main__":
    main()
