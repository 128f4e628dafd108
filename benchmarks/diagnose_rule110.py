"""Look inside the models `reproduce_rule110.py` trained: why the N-trend is (or is not) there.

    python benchmarks/diagnose_rule110.py runs/reproduce_rule110_cpu
    python benchmarks/diagnose_rule110.py runs/reproduce_rule110_cpu --examples 500 --eval-passes 1 2 3 4

For every finished job of a harness output directory (OUT/jobs/<name>/train/model) it measures,
on the held-out test split:

1. N at test time: exact match per t when the model is run with N_eval consolidation passes
   (`--eval-passes`), not only the N it was trained with. A model that relies on its passes
   loses accuracy when they are taken away; one that ignores them does not move.
2. The fast-weight gates of every GDN block over the test inputs (training-time forward, so
   context chunks are consolidated N times): the per-token decay exp(g) (near 0 = the state
   is wiped every token, near 1 = kept) and the write strength beta (near 0 = nothing written).
3. Gradient reach: the norm of d(loss)/d(input embedding) per context string (chunk). Strings
   are evicted from attention before the question, so everything the answer knows about them
   arrives through the fast-weight state; a gradient that vanishes for early strings means the
   state does not carry them.

Writes OUT/diagnostics.json and OUT/diagnostics.md; prints the markdown.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from sleep_retrofit.evaluation import EvalSpec, load_model, run_grid
from sleep_retrofit.tasks import SleepCollator, make_task
from sleep_retrofit.tasks.splits import generate_split


def _gdn_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The GDN mixers of the inserted fast-weight blocks, by block name."""
    from sleep_retrofit.layers import GatedDeltaNet

    return {
        name: module
        for name, block in model.fast_weights.items()
        for module in block.modules()
        if isinstance(module, GatedDeltaNet)
    }


def gate_statistics(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """Decay exp(g) and beta of every GDN block over one training-style forward of `batch`
    (the layer's own `gates` on each call's input; the batch has no padding)."""
    collected: dict[str, dict[str, list[torch.Tensor]]] = {}
    handles = []
    for name, gdn in _gdn_modules(model).items():
        store = collected.setdefault(name, {"decay": [], "beta": []})

        def on_call(module, args, output, store=store):
            g, beta = module.gates(args[0])
            store["decay"].append(g.exp().detach().flatten())
            store["beta"].append(beta.detach().flatten())

        handles.append(gdn.register_forward_hook(on_call))
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    stats = {}
    for name, store in collected.items():
        decay, beta = torch.cat(store["decay"]), torch.cat(store["beta"])
        stats[name] = {
            "decay_mean": decay.mean().item(),
            "decay_below_0.1": (decay < 0.1).float().mean().item(),
            "decay_above_0.99": (decay > 0.99).float().mean().item(),
            "beta_mean": beta.mean().item(),
            "beta_below_0.1": (beta < 0.1).float().mean().item(),
        }
    return stats


def gradient_reach(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], window: int, num_strings: int
) -> tuple[list[float], float]:
    """Mean norm of d(loss)/d(input embedding) over the tokens of each context string, and
    the norm of the gradient of all parameters (what the trainer clips)."""
    embeddings = model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_(True)
    output = model(inputs_embeds=embeddings, attention_mask=batch["attention_mask"], labels=batch["labels"])
    parameters = [p for p in model.parameters() if p.requires_grad]
    grad, *parameter_grads = torch.autograd.grad(output.loss, [embeddings, *parameters], allow_unused=True)
    parameter_norm = torch.stack([g.norm() for g in parameter_grads if g is not None]).norm().item()
    norms = grad.norm(dim=-1)  # [B, T]
    # The collator left-pads the context to whole chunks: the strings are the last
    # num_strings whole chunks before the question chunk(s).
    real = batch["attention_mask"].bool()
    first_real = int(real.float().argmax(dim=1).min())
    start = first_real - first_real % window
    per_string = [
        norms[:, start + i * window : start + (i + 1) * window].mean().item() for i in range(num_strings)
    ]
    return per_string, parameter_norm


def _batch(rows: list[dict[str, Any]], tokenizer: Any, window: int) -> dict[str, torch.Tensor]:
    vocab = tokenizer.get_vocab()
    collator = SleepCollator(window, tokenizer.pad_token_id or 0)
    return collator(
        [
            {
                "input_ids": [vocab[token] for token in row["tokens"]],
                "loss_mask": row["loss_mask"],
                "target_start": row["target_start"],
            }
            for row in rows
        ]
    )


def diagnose_job(job_dir: Path, examples: int, eval_passes: list[int], steps: list[int]) -> dict[str, Any]:
    from transformers import AutoTokenizer

    summary = json.loads((job_dir / "summary.json").read_text())
    job = summary["job"]
    model_dir = job_dir / "train" / "model"
    options = {k: v for k, v in job["train_config"]["data"]["options"].items() if k != "steps"}
    window = job["train_config"]["model"]["window"]

    grid = run_grid(
        EvalSpec(
            model=model_dir,
            tasks=("rule110",),
            passes=tuple(eval_passes),
            steps=tuple(steps),
            num_examples=examples,
            batch_size=250,
            out=job_dir / "diagnose_eval",
            window=window,
            eviction="hard",
            task_options={"rule110": options},
            device="cpu",
            progress=False,
        )
    )
    by_passes: dict[int, dict[int, float]] = {}
    for record in grid.records:
        by_passes.setdefault(record["passes"], {})[record["difficulty"]] = record["exact_match"]

    model = load_model(model_dir, device="cpu")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    hardest = max(steps)
    task = make_task("rule110", **options, steps=hardest)
    rows = generate_split(task, "test", min(examples, 256))
    batch = _batch(rows, tokenizer, window)
    reach, parameter_norm = gradient_reach(model, batch, window, options["num_strings"])
    return {
        "name": job["name"],
        "label": job["label"],
        "seed": job["seed"],
        "trained_passes": job["passes"],
        "exact_match_by_eval_passes": {str(n): by_passes[n] for n in sorted(by_passes)},
        "gates": gate_statistics(model, batch),
        "gradient_reach_t": hardest,
        "gradient_reach": reach,
        "parameter_gradient_norm": parameter_norm,
    }


def markdown(results: list[dict[str, Any]], steps: list[int]) -> str:
    lines = ["# Rule 110 diagnostics", ""]
    lines += [
        "## Exact match when run with N_eval passes (rows: trained model, columns: t)",
        "",
        "| model | seed | N_eval | " + " | ".join(f"t={t}" for t in steps) + " |",
        "|---|---:|---:|" + "---:|" * len(steps),
    ]
    for r in results:
        for n, per_t in r["exact_match_by_eval_passes"].items():
            cells = " | ".join(f"{per_t[t] if t in per_t else per_t[str(t)]:.3f}" for t in steps)
            mark = " (trained)" if int(n) == r["trained_passes"] else ""
            lines.append(f"| {r['label']} | {r['seed']} | {n}{mark} | {cells} |")
    lines += ["", "## Fast-weight gates (test inputs at the hardest t, training-style forward)", ""]
    lines += [
        "| model | seed | block | mean decay exp(g) | decay < 0.1 | decay > 0.99 | mean beta | beta < 0.1 |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for block, s in r["gates"].items():
            lines.append(
                f"| {r['label']} | {r['seed']} | {block} | {s['decay_mean']:.3f} "
                f"| {s['decay_below_0.1']:.2f} | {s['decay_above_0.99']:.2f} "
                f"| {s['beta_mean']:.3f} | {s['beta_below_0.1']:.2f} |"
            )
    title = "## Gradient reach: mean |d loss / d embedding| per string (0 = oldest); parameter gradient norm"
    lines += ["", title, ""]
    count = max(len(r["gradient_reach"]) for r in results)
    lines += [
        "| model | seed | " + " | ".join(f"string {i}" for i in range(count)) + " | gradient norm |",
        "|---|---:|" + "---:|" * (count + 1),
    ]
    for r in results:
        cells = " | ".join(f"{v:.2e}" for v in r["gradient_reach"])
        lines.append(f"| {r['label']} | {r['seed']} | {cells} | {r['parameter_gradient_norm']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="a reproduce_rule110.py output directory")
    parser.add_argument("--examples", type=int, default=500, help="test examples per t")
    parser.add_argument("--eval-passes", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="t values")
    parser.add_argument("--only", nargs="+", help="job names to diagnose (default: all finished)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    job_dirs = sorted(p.parent for p in (args.out / "jobs").glob("*/summary.json"))
    if args.only:
        job_dirs = [p for p in job_dirs if p.name in args.only]
    if not job_dirs:
        print(f"error: no finished jobs under {args.out / 'jobs'}", file=sys.stderr)
        return 2
    results = []
    for job_dir in job_dirs:
        print(f"  {job_dir.name} ...", file=sys.stderr, flush=True)
        results.append(diagnose_job(job_dir, args.examples, args.eval_passes, args.steps))
    text = markdown(results, args.steps)
    (args.out / "diagnostics.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "diagnostics.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
