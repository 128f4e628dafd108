"""Reproduce the paper's N-trend with this toolkit: Rule 110 (and Depo) trained from scratch.

    python benchmarks/reproduce_rule110.py --profile cpu                 # Rule 110, N = 1..4 x 3 seeds
    python benchmarks/reproduce_rule110.py --profile cpu --arm full n1-long n1-wide --seeds 1
    python benchmarks/reproduce_rule110.py --profile depo-cpu            # Depo, N = 1, 2, 4 x 2 seeds
    python benchmarks/reproduce_rule110.py --profile smoke               # plumbing, < 1 min
    python benchmarks/reproduce_rule110.py --profile gpu --jobs 1        # the paper's Rule 110 setting
    python benchmarks/reproduce_rule110.py --profile cpu --dry-run       # the job plan only

Every run trains the toolkit's toy hybrid (`sleep_retrofit.toy.build_toy_hybrid`: attn -> GDN ->
attn -> GDN, the loop over the whole stack) from scratch with hard eviction, through the
toolkit's own trainer (`sleep_retrofit.train.train`, one stage: `stages=[stage2]`, everything
trains; stage 1's fast-weights-only warm-up is for retrofits of pretrained models). Then it
scores the trained model on the held-out test split with the evaluation grid
(`sleep_retrofit.evaluation.run_grid`), one cell per difficulty at the run's own N:
Rule 110 exact match (all labels right) and per-string accuracy, decoded free running (each
label after the model's own earlier labels); Depo answer accuracy and test loss per k.

Rule 110 layout: each of the S strings is its own chunk (L = W). When training mixes several t
the t is announced: every string opens with a `t{t}` token (L = W + 1), so the model knows
which t is asked while it consolidates (without it the labels are ambiguous:
`benchmarks/rule110_without_t_ceiling.py`). One t per run (`--train-t 8`) is the paper's layout.
Depo: the graph's edges span 4 windows of L tokens, the queries a fifth; each query draws k.

Arms (`--arm`, several allowed):
- `sleep`: one run per N in `--passes` and seed, all at the same token budget.
- `n1-long`: N = 1 trained for N_best times the steps (`--n-best`, default max(--passes)):
  the same training FLOPs as N_best passes, spent on more data instead of more passes.
- `n1-wide`: N = 1 with more GDN heads (same head size, so a wider state) chosen so that the
  per-token matmul FLOPs (2 x non-embedding parameters) are N_best times the N = 1 model's
  (`--wide-gdn-heads` overrides the count).
- `full`: the control where the answer is known to be reachable: N = 1, nothing evicted
  (sliding eviction with a window past the whole example), so the question attends to the
  whole context.

Independent runs go to parallel subprocesses with one torch thread each (`--jobs`,
`--threads`): on the 2-core CPU machine two single-thread jobs run at full speed where one
2-thread job gave erratic step times. Each job lives in `OUT/jobs/<name>/` (the trainer's
stage directory, its final model, the evaluation grid's results.json and a summary.json); a
rerun skips finished jobs and the trainer resumes unfinished ones from their checkpoints.
`OUT/results.json` (its `summary` list: per (arm, N, difficulty) the metrics' mean, std, min,
max and per-seed values), `OUT/results.md`, `OUT/accuracy.png`, `OUT/loss.png` (every run's
training loss, a panel per arm) and, for Rule 110, `OUT/per_string.png` (per-string accuracy
per t) collect them.

Profiles:
- `cpu`: Rule 110, d = 64, GDN one head of 64 (the toolkit's retention init), 4 strings of
  W = 16 (L = 17 with the t token), t mixed over {0..4}, batch 128, AdamW 2e-3, 50 warm-up
  steps, cosine to 0, clip 1.0, 600 steps (5.6M tokens), 1,000 test examples per t,
  N = 1, 2, 4 x 3 seeds (measured: 87 min wall on 2 cores with both controls, docs/results.md).
- `depo-cpu`: Depo, cycles of 3-16 nodes written as one-token words (16 symbols), 4 queries,
  L = 8 (the test graph's 32 context tokens fill 4 windows, the queries a fifth), k drawn from
  1..8 per query (tested at 1, 2, 4, 8), N = 1, 2, 4 x 2 seeds, otherwise as `cpu`.
- `depo-words2`: the first Depo attempt (cycles of 3-24 nodes as 2-symbol words, L = 24): no
  arm learned it (N = 1 at 600 steps, full attention at 300; docs/results.md).
- `gpu`: the paper: W=24, d=256, L=24, t=32 fixed (the paper trained one t per run), batch 512
  (64 x 8 accumulation), Muon 2e-3 + AdamW 5e-5, 100 warm-up steps, bf16, ~5B tokens (96,700
  steps at T=101). The paper reports under one A6000-day per run; on one H100 expect roughly
  8-16 h per N = 1 run and about N times that for N passes (an estimate, not measured).
- `smoke` / `depo-smoke`: tiny sizes, a few steps: the plumbing (the test suite runs them).
  Their numbers mean nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
ARMS = ("sleep", "n1-long", "n1-wide", "full")
SUMMARY_FILE = "summary.json"


@dataclass(frozen=True)
class Profile:
    """One preset of the harness: task, model, optimiser and budget."""

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    width: int  # Rule 110: W, bits per string. Depo: the window L (the graph spans 4 of them)
    num_strings: int  # Rule 110 only
    train_t: tuple[int, ...]  # the difficulties trained (Rule 110: t; Depo: k, drawn per query)
    eval_t: tuple[int, ...]  # the difficulties evaluated, one grid cell each
    max_steps: int
    batch_size: int
    gradient_accumulation_steps: int
    optimizer: str
    muon_lr: float
    adamw_lr: float
    warmup_steps: int
    min_lr_ratio: float
    max_grad_norm: float | None
    mixed_precision: str
    eval_examples: int
    eval_batch_size: int
    passes: tuple[int, ...] = (1, 2, 3)
    seeds: int = 2
    jobs: int = 2
    threads: int | None = 1  # torch threads per job; None = torch's default
    device: str | None = "cpu"
    # Rows held in memory; beyond this the run takes several epochs over them (None = one epoch).
    max_train_examples: int | None = None
    task: str = "rule110"
    # Rule 110: announce t at the start of every string (None: exactly when training mixes t).
    announce: bool | None = None
    # Toy-model knobs (None = build_toy_hybrid's default).
    gdn_heads: int | None = None
    gdn_head_dim: int | None = None
    initializer_range: float = 0.02
    # Depo task options (DepoConfig fields besides hops / max_hops, which come from train_t).
    depo_options: tuple[tuple[str, Any], ...] = ()
    expected: str = ""

    @property
    def announces(self) -> bool:
        return self.task == "rule110" and (
            len(set(self.train_t)) > 1 if self.announce is None else self.announce
        )

    @property
    def window(self) -> int:
        """L: Rule 110 puts every string (and its t token) in its own chunk."""
        return self.width + int(self.announces) if self.task == "rule110" else self.width

    def task_options(self) -> dict[str, Any]:
        """The task config fields every run shares (the difficulty comes per run / cell)."""
        if self.task == "rule110":
            options: dict[str, Any] = {"width": self.width, "num_strings": self.num_strings}
            if self.announces:
                options["announce_steps"] = True
            return options
        return {**dict(self.depo_options), "max_hops": max(*self.train_t, *self.eval_t)}

    @property
    def tokens_per_example(self) -> int:
        """Columns of one collated example (Rule 110: S strings (+ t tokens), `?`, S labels;
        Depo: the largest graph's context padded to whole windows, and its queries)."""
        if self.task == "rule110":
            return self.num_strings * self.window + 1 + self.num_strings
        from sleep_retrofit.tasks import DepoConfig, DepoTask

        config = DepoConfig.for_test(**self.task_options())
        example = DepoTask(config).example(__import__("random").Random(0))
        context = -(-example["target_start"] // self.window) * self.window
        return context + len(example["input_ids"]) - example["target_start"]

    def tokens(self, steps: int) -> int:
        return steps * self.batch_size * self.gradient_accumulation_steps * self.tokens_per_example


_CPU_OPTIMISER = dict(
    batch_size=128,
    gradient_accumulation_steps=1,
    optimizer="adamw",
    muon_lr=0.0,
    adamw_lr=2e-3,
    warmup_steps=50,
    min_lr_ratio=0.0,
    max_grad_norm=1.0,
    mixed_precision="no",
)

PROFILES: dict[str, Profile] = {
    "cpu": Profile(
        name="cpu",
        hidden_size=64,
        num_layers=4,
        num_heads=4,
        width=16,
        num_strings=4,
        train_t=(0, 1, 2, 3, 4),
        eval_t=(0, 1, 2, 3, 4),
        max_steps=600,
        eval_examples=1000,
        eval_batch_size=250,
        passes=(1, 2, 4),  # N = 3 too (--passes 1 2 3 4) adds ~75 min with 3 seeds
        seeds=3,
        gdn_heads=1,
        **_CPU_OPTIMISER,
        expected="measured: 87 min wall, 2 jobs, --arm sleep full n1-long (a job: N=1 5, N=2 11, N=4 25 min)",
    ),
    "gpu": Profile(
        name="gpu",
        hidden_size=256,
        num_layers=4,
        num_heads=4,
        width=24,
        num_strings=4,
        train_t=(32,),
        eval_t=(32,),
        max_steps=96_700,
        batch_size=64,
        gradient_accumulation_steps=8,
        optimizer="muon",
        muon_lr=2e-3,
        adamw_lr=5e-5,
        warmup_steps=100,
        min_lr_ratio=0.1,
        max_grad_norm=1.0,
        mixed_precision="bf16",
        eval_examples=1000,
        eval_batch_size=500,
        passes=(1, 2, 3, 4),
        seeds=1,
        jobs=1,
        threads=None,
        device=None,
        max_train_examples=400_000,  # as recipes/configs/rule110_paper.yaml; ~120 epochs at 5B tokens
        expected="paper: < 1 A6000-day per run; estimate (unmeasured) 8-16 h per N=1 run on one H100, ~N x",
    ),
    "smoke": Profile(
        name="smoke",
        hidden_size=32,
        num_layers=4,
        num_heads=4,
        width=8,
        num_strings=3,
        train_t=(0, 1, 2, 3, 4),
        eval_t=(0, 1, 2, 3, 4),
        max_steps=20,
        batch_size=16,
        gradient_accumulation_steps=1,
        optimizer="adamw",
        muon_lr=0.0,
        adamw_lr=2e-3,
        warmup_steps=2,
        min_lr_ratio=0.0,
        max_grad_norm=1.0,
        mixed_precision="no",
        eval_examples=64,
        eval_batch_size=64,
        expected="< 2 min on the 2-core CPU machine",
    ),
    "depo-cpu": Profile(
        name="depo-cpu",
        task="depo",
        hidden_size=64,
        num_layers=4,
        num_heads=4,
        width=8,  # L: a 16-node graph is 16 edges x 2 one-token words = 32 tokens = 4 windows
        num_strings=0,
        train_t=tuple(range(1, 9)),
        eval_t=(1, 2, 4, 8),
        max_steps=600,
        eval_examples=500,
        eval_batch_size=250,
        passes=(1, 2, 4),
        seeds=2,
        gdn_heads=1,
        depo_options=(
            ("min_nodes", 3),
            ("max_nodes", 16),
            ("num_queries", 4),
            ("word_length", 1),
            ("num_symbols", 16),
        ),
        **_CPU_OPTIMISER,
        expected="measured job times: docs/results.md",
    ),
    "depo-smoke": Profile(
        name="depo-smoke",
        task="depo",
        hidden_size=32,
        num_layers=4,
        num_heads=4,
        width=8,
        num_strings=0,
        train_t=(1, 2),
        eval_t=(1, 2),
        max_steps=4,
        batch_size=8,
        gradient_accumulation_steps=1,
        optimizer="adamw",
        muon_lr=0.0,
        adamw_lr=2e-3,
        warmup_steps=1,
        min_lr_ratio=0.0,
        max_grad_norm=1.0,
        mixed_precision="no",
        eval_examples=8,
        eval_batch_size=8,
        passes=(1, 2),
        seeds=1,
        depo_options=(
            ("min_nodes", 3),
            ("max_nodes", 8),
            ("num_queries", 2),
            ("word_length", 2),
            ("num_symbols", 4),
        ),
        expected="< 1 min",
    ),
}

# The first Depo attempt: the depo-cpu run with 2-symbol words over 24-node cycles, L = 24 (a
# graph of 24 nodes is 96 tokens = 4 windows, 4 queries of 6 tokens the fifth).
PROFILES["depo-words2"] = dataclasses.replace(
    PROFILES["depo-cpu"],
    name="depo-words2",
    width=24,
    depo_options=(
        ("min_nodes", 3),
        ("max_nodes", 24),
        ("num_queries", 4),
        ("word_length", 2),
        ("num_symbols", 10),
    ),
    expected="the first Depo attempt (docs/results.md): no arm learned it at 600 steps",
)


# ----------------------------------------------------------------------------- the job plan
@dataclass
class Job:
    """One training + evaluation run, written as JSON for the worker process."""

    name: str
    arm: str
    passes: int
    seed: int
    steps: int
    directory: str
    train_config: dict[str, Any]
    train_t: list[int]
    eval_t: list[int]
    eval_examples: int
    eval_batch_size: int
    device: str | None
    threads: int | None
    wide_gdn_heads: int | None = None
    label: str = ""
    tokens: int = 0
    cost: int = 0  # steps x passes (x n_best for n1-wide): longest first keeps the workers busy
    extra: dict[str, Any] = field(default_factory=dict)


def train_config_dict(
    profile: Profile,
    passes: int,
    seed: int,
    steps: int,
    output_dir: Path,
    train_t: Sequence[int] | None = None,
    gdn_heads: int | None = None,
    full_attention: bool = False,
) -> dict[str, Any]:
    """The trainer config (`sleep_retrofit.train.config_from_dict`) of one run.

    full_attention: the control arm where nothing is evicted: sliding eviction with a window of
    the example's length (the context is one chunk, padded to it; the answer's keys reach back
    over all of it), N = 1."""
    if train_t is not None:  # the run's own t list decides the layout (announced iff mixed)
        profile = dataclasses.replace(profile, train_t=tuple(train_t))
    examples = steps * profile.batch_size * profile.gradient_accumulation_steps
    if profile.max_train_examples is not None:
        examples = min(examples, profile.max_train_examples)
    train_t = list(dict.fromkeys(profile.train_t))
    eviction = "sliding" if full_attention else "hard"
    window = profile.tokens_per_example if full_attention else profile.window
    stage = {
        "max_steps": steps,
        "eviction": eviction,
        "finetune": "full",
        "optimizer": profile.optimizer,
        "muon_lr": profile.muon_lr,
        "adamw_lr": profile.adamw_lr,
        "warmup_steps": profile.warmup_steps,
        "min_lr_ratio": profile.min_lr_ratio,
    }
    options = profile.task_options()
    data: dict[str, Any] = {
        "task": profile.task,
        # One epoch of fresh examples (no example seen twice) unless the profile caps it.
        "train_examples": examples,
        "eval_examples": min(256, profile.eval_examples),
        "options": options,
        "seed": seed,
    }
    if profile.task == "depo":
        options["hops"] = train_t  # every query draws its k from these
    elif len(train_t) == 1:
        options["steps"] = train_t[0]
    else:
        data["mixture"] = [{"steps": t} for t in train_t]
    return {
        "output_dir": str(output_dir),
        "seed": seed,
        # From scratch, everything trains: the single full stage under hard eviction.
        "stages": ["stage2"],
        "batch_size": profile.batch_size,
        "gradient_accumulation_steps": profile.gradient_accumulation_steps,
        "eval_batch_size": profile.eval_batch_size,
        "mixed_precision": profile.mixed_precision,
        "max_grad_norm": profile.max_grad_norm,
        "save_every": max(1, min(steps, 500)),
        "save_total_limit": 1,
        "log_every": max(1, min(25, steps)),
        "progress": False,
        "model": {
            "source": "toy",
            "hidden_size": profile.hidden_size,
            "num_layers": profile.num_layers,
            "num_heads": profile.num_heads,
            "gdn_heads": profile.gdn_heads if gdn_heads is None else gdn_heads,
            "gdn_head_dim": profile.gdn_head_dim,
            "initializer_range": profile.initializer_range,
            "passes": passes,
            "window": window,
            "eviction": eviction,
        },
        "data": data,
        "stage2": stage,
    }


def plan_jobs(
    profile: Profile,
    out_dir: Path,
    *,
    passes: Sequence[int],
    seeds: int,
    arms: Sequence[str],
    matched_seeds: int | None = None,
    n_best: int | None = None,
    max_steps: int | None = None,
    train_t: Sequence[int] | None = None,
    eval_t: Sequence[int] | None = None,
    eval_examples: int | None = None,
    wide_gdn_heads: int | None = None,
    threads: int | None = None,
) -> list[Job]:
    """Every (arm, N, seed) run of the harness, in the order they are started."""
    if not passes or any(not isinstance(n, int) or n < 1 for n in passes):
        raise ValueError(f"passes must be a non-empty list of ints >= 1, got {list(passes)!r}")
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    matched_seeds = seeds if matched_seeds is None else matched_seeds
    if not 1 <= matched_seeds <= seeds:
        raise ValueError(f"matched_seeds must be in [1, seeds={seeds}], got {matched_seeds}")
    unknown = [a for a in arms if a not in ARMS]
    if unknown or not arms:
        raise ValueError(f"arm must be some of {list(ARMS)}, got {list(arms)!r}")
    n_best = max(passes) if n_best is None else n_best
    if n_best < 1:
        raise ValueError(f"n_best must be >= 1, got {n_best}")
    steps = profile.max_steps if max_steps is None else max_steps
    if steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {steps}")
    train_t = list(profile.train_t if train_t is None else train_t)
    eval_t = list(profile.eval_t if eval_t is None else eval_t)
    for name, values in (("train_t", train_t), ("eval_t", eval_t)):
        if not values or any(not isinstance(t, int) or t < 0 for t in values):
            raise ValueError(f"{name} must be a non-empty list of ints >= 0, got {values!r}")
    threads = profile.threads if threads is None else threads
    profile = dataclasses.replace(profile, train_t=tuple(train_t), eval_t=tuple(eval_t))

    runs: list[tuple[str, int, int, str, int | None]] = []  # arm, N, steps, label, wide heads
    if "sleep" in arms:
        runs += [("sleep", n, steps, f"N={n}", None) for n in dict.fromkeys(passes)]
    if "n1-long" in arms:
        runs.append(("n1-long", 1, steps * n_best, f"N=1 long (x{n_best} steps)", None))
    if "n1-wide" in arms:
        heads = wide_gdn_heads if wide_gdn_heads is not None else flop_matched_gdn_heads(profile, n_best)
        runs.append(("n1-wide", 1, steps, f"N=1 wide ({heads} GDN heads)", heads))
    if "full" in arms:
        runs.append(("full", 1, steps, "full attention (control)", None))

    jobs = []
    # Seed-major order: with 2 parallel jobs a wave holds comparable runs.
    for seed in range(seeds):
        for arm, n, arm_steps, label, heads in runs:
            if arm != "sleep" and seed >= matched_seeds:
                continue
            name = f"{arm}_N{n}_seed{seed}" if arm == "sleep" else f"{arm}_seed{seed}"
            directory = out_dir / "jobs" / name
            jobs.append(
                Job(
                    name=name,
                    arm=arm,
                    passes=n,
                    seed=seed,
                    steps=arm_steps,
                    directory=str(directory),
                    train_config=train_config_dict(
                        profile,
                        n,
                        seed,
                        arm_steps,
                        directory / "train",
                        train_t,
                        gdn_heads=heads,
                        full_attention=arm == "full",
                    ),
                    train_t=train_t,
                    eval_t=eval_t,
                    eval_examples=profile.eval_examples if eval_examples is None else eval_examples,
                    eval_batch_size=profile.eval_batch_size,
                    device=profile.device,
                    threads=threads,
                    wide_gdn_heads=heads,
                    label=label,
                    tokens=profile.tokens(arm_steps),
                    cost=arm_steps * (n_best if arm == "n1-wide" else n),
                )
            )
    return jobs


# ----------------------------------------------------------------------------- models
def gdn_head_dim(profile: Profile) -> int:
    """The profile's GDN head size (the wide arm adds heads of this size)."""
    if profile.gdn_head_dim is not None:
        return profile.gdn_head_dim
    return profile.hidden_size // (profile.gdn_heads or profile.num_heads)


def build_wide_toy(profile: Profile, vocab_size: int, gdn_heads: int, *, passes: int = 1, seed: int = 0):
    """The profile's toy hybrid with `gdn_heads` GDN heads of the profile's head size, so its
    state is gdn_heads / (the profile's heads) times the default's."""
    from sleep_retrofit.toy import build_toy_hybrid

    return build_toy_hybrid(
        vocab_size,
        hidden_size=profile.hidden_size,
        num_layers=profile.num_layers,
        num_heads=profile.num_heads,
        gdn_heads=gdn_heads,
        gdn_head_dim=gdn_head_dim(profile),
        initializer_range=profile.initializer_range,
        passes=passes,
        window=profile.window,
        eviction="hard",
        seed=seed,
    )


def _matmul_parameters(model: Any) -> int:
    """Parameters that cost 2 FLOPs per token in the forward pass: all but the embeddings."""
    embedding = model.get_input_embeddings().weight
    return sum(p.numel() for p in model.parameters() if p is not embedding)


def flop_matched_gdn_heads(profile: Profile, n_best: int) -> int:
    """GDN heads (head size fixed) that give N=1 the per-token matmul FLOPs of N=n_best with the
    profile's heads. Sleep runs every layer N times per context chunk, so N passes cost about N
    times the matmul FLOPs of one; the parameter count is affine in the head count, so two
    builds give the slope. Attention-score and state-update FLOPs (small at d=64, L=17) are
    left out."""
    vocab = 128
    base = profile.gdn_heads or profile.num_heads
    p_base = _matmul_parameters(build_wide_toy(profile, vocab, base))
    p_double = _matmul_parameters(build_wide_toy(profile, vocab, 2 * base))
    per_head = (p_double - p_base) / base
    return max(base, round(base + (n_best - 1) * p_base / per_head))


# ----------------------------------------------------------------------------- the worker
def run_job(job: Job) -> dict[str, Any]:
    """Train and evaluate one job (in this process); returns and writes its summary."""
    import torch

    from sleep_retrofit.evaluation import EvalSpec, run_grid
    from sleep_retrofit.train import train
    from sleep_retrofit.train.config import config_from_dict

    if job.threads is not None:
        torch.set_num_threads(job.threads)
    directory = Path(job.directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = config_from_dict(json.loads(json.dumps(job.train_config)))
    task = config.data.task

    began = time.perf_counter()
    results = train(config)
    train_seconds = time.perf_counter() - began

    began = time.perf_counter()
    # The grid sets the difficulty per cell: the trained t / hop list is not a task option there.
    options = {k: v for k, v in config.data.options.items() if k not in ("steps", "hops")}
    axis = {"rule110": "steps", "depo": "hops"}[task]
    grid = run_grid(
        EvalSpec(
            model=Path(config.output_dir) / "model",
            tasks=(task,),
            passes=(job.passes,),
            **{axis: tuple(job.eval_t)},
            num_examples=job.eval_examples,
            batch_size=job.eval_batch_size,
            out=directory / "eval",
            window=config.model.window,
            eviction=config.model.eviction,
            task_options={task: options},
            device=job.device,
            progress=False,
        )
    )
    eval_seconds = time.perf_counter() - began
    summary = {
        "job": dataclasses.asdict(job),
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "last_loss": results[-1].last_loss if results else None,
        "records": grid.records,
    }
    (directory / SUMMARY_FILE).write_text(json.dumps(summary, indent=1, default=str) + "\n")
    return summary


def _run_subprocess(job: Job) -> dict[str, Any] | None:
    """Run one job in a fresh single-purpose Python process; None when it failed."""
    directory = Path(job.directory)
    directory.mkdir(parents=True, exist_ok=True)
    spec_path = directory / "job.json"
    spec_path.write_text(json.dumps(dataclasses.asdict(job), indent=1) + "\n")
    env = dict(os.environ)
    if job.threads is not None:
        # One thread from the start: OpenMP / MKL read these before torch.set_num_threads runs.
        env.update({"OMP_NUM_THREADS": str(job.threads), "MKL_NUM_THREADS": str(job.threads)})
    began = time.perf_counter()
    with (directory / "log.txt").open("w", encoding="utf-8") as log:
        code = subprocess.call(
            [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(REPO),
        )
    _note(
        f"{job.name}: {'done' if code == 0 else f'FAILED (exit {code}), see {directory}/log.txt'} "
        f"in {time.perf_counter() - began:.0f} s"
    )
    return _read_summary(directory) if code == 0 else None


def _read_summary(directory: Path) -> dict[str, Any] | None:
    path = directory / SUMMARY_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _note(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- aggregation
# The metrics of each task's grid records that the harness aggregates over seeds, headline first.
METRICS: dict[str, tuple[tuple[str, str], ...]] = {
    "rule110": (("exact_match", "exact match"), ("mean_per_label_accuracy", "mean per-string accuracy")),
    "depo": (("accuracy", "accuracy (whole answer word)"), ("loss", "test loss per answer token")),
}
DIFFICULTY = {"rule110": "t", "depo": "k"}


def aggregate(summaries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (arm label, difficulty): each of the task's METRICS over seeds (mean, sample
    standard deviation, min, max, the seeds' values) and, for Rule 110, the per-string accuracy
    averaged over seeds (`per_label_accuracy_mean`) and per seed (`per_label_accuracy`)."""
    groups: dict[tuple[str, int], list[tuple[int, dict[str, Any]]]] = {}
    order: dict[str, tuple[int, int, int]] = {}
    for summary in summaries:
        job = summary["job"]
        order.setdefault(job["label"], (ARMS.index(job["arm"]), job["passes"], len(order)))
        for record in summary["records"]:
            groups.setdefault((job["label"], record["difficulty"]), []).append((job["seed"], record))
    rows = []
    for (label, t), items in sorted(groups.items(), key=lambda kv: (order[kv[0][0]], kv[0][1])):
        items.sort(key=lambda item: item[0])
        records = [r for _, r in items]
        first = next(s for s in summaries if s["job"]["label"] == label)["job"]
        task = records[0]["task"]
        row: dict[str, Any] = {
            "label": label,
            "arm": first["arm"],
            "passes": first["passes"],
            "steps": first["steps"],
            "tokens": first["tokens"],
            "task": task,
            "t": t,
            "seeds": [seed for seed, _ in items],
            "num_examples": records[0]["num_examples"],
        }
        for key, _ in METRICS[task]:
            row[key] = _spread([r[key] for r in records])
        if task == "rule110":
            per_label = [r["per_label_accuracy"] for r in records]
            row["per_label_accuracy"] = per_label
            row["per_label_accuracy_mean"] = [statistics.fmean(v) for v in zip(*per_label, strict=True)]
            row["chance_exact_match"] = records[0]["chance_exact_match"]
        rows.append(row)
    return rows


def _spread(values: Sequence[float]) -> dict[str, Any]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "values": list(values),
    }


def markdown_table(rows: Sequence[dict[str, Any]], header: Sequence[str]) -> str:
    """One table per metric: difficulty rows, one column per arm label, each cell
    "mean ± std [min, max]" over seeds; for Rule 110 also the per-string accuracy
    (mean over seeds, oldest string first)."""
    labels = list(dict.fromkeys(r["label"] for r in rows))
    ts = sorted({r["t"] for r in rows})
    by_cell = {(r["label"], r["t"]): r for r in rows}
    task = rows[0]["task"] if rows else "rule110"
    axis = DIFFICULTY[task]
    lines = list(header)

    def table(title: str, cell: Callable[[dict[str, Any]], str]) -> None:
        lines.extend(
            [title, "", f"| {axis} | " + " | ".join(labels) + " |", "|---:|" + "---:|" * len(labels)]
        )
        for t in ts:
            cells = [cell(by_cell[(label, t)]) if (label, t) in by_cell else "–" for label in labels]
            lines.append(f"| {t} | " + " | ".join(cells) + " |")
        lines.append("")

    for key, title in METRICS[task]:
        chance = f" (chance {rows[0]['chance_exact_match']:.4g})" if key == "exact_match" and rows else ""
        table(
            f"**{title}{chance}**: mean ± std [min, max] over seeds",
            lambda row, key=key: "{mean:.3f} ± {std:.3f} [{min:.3f}, {max:.3f}]".format(**row[key]),
        )
    if task == "rule110":
        table(
            "**per-string accuracy** (string 0 = the oldest, evicted first): mean over seeds",
            lambda row: " / ".join(f"{v:.2f}" for v in row["per_label_accuracy_mean"]),
        )
    seeds = {r["label"]: len(r["seeds"]) for r in rows}
    tokens = {r["label"]: r["tokens"] for r in rows}
    lines += ["| run | seeds | training tokens |", "|---|---:|---:|"]
    lines += [f"| {label} | {seeds[label]} | {tokens[label]:,} |" for label in labels]
    return "\n".join(lines) + "\n"


def _figure(width: float = 6, height: float = 4, ncols: int = 1):
    """A matplotlib Figure and its axes."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width * ncols, height), layout="constrained")
    return figure, figure.subplots(1, ncols, squeeze=False)[0]


def plot(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """The headline metric (and for Depo the test loss) against difficulty, one line per arm
    label, error bars = std over seeds."""
    if not rows:
        return None
    task = rows[0]["task"]
    metrics = METRICS[task] if task == "depo" else METRICS[task][:1]
    figure, axes = _figure(ncols=len(metrics))
    for ax, (key, title) in zip(axes, metrics, strict=True):
        for label in dict.fromkeys(r["label"] for r in rows):
            points = sorted((r["t"], r[key]["mean"], r[key]["std"]) for r in rows if r["label"] == label)
            ax.errorbar(*zip(*points, strict=True), marker="o", capsize=3, label=label)
        if key == "exact_match":
            ax.axhline(rows[0]["chance_exact_match"], color="grey", linestyle=":", label="chance")
        if key != "loss":
            ax.set_ylim(-0.02, 1.02)
        ax.set_xticks(sorted({r["t"] for r in rows}))
        ax.set_xlabel({"rule110": "t (Rule 110 steps)", "depo": "k (hops)"}[task])
        ax.set_ylabel(f"{title} (test)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    figure.suptitle(f"{task}: mean ± std over seeds")
    figure.savefig(path, dpi=120)
    return path


def plot_per_string(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Rule 110's per-string accuracy (string 0 = the oldest, evicted first): one panel per t,
    one line per arm label, error bars = std over seeds. Shows whether a run fails to store the
    old strings (a slope towards string 0) or to compute all of them (a flat drop)."""
    rows = [r for r in rows if r["task"] == "rule110"]
    if not rows:
        return None
    ts = sorted({r["t"] for r in rows})
    figure, axes = _figure(width=2.6, height=2.8, ncols=len(ts))
    for ax, t in zip(axes, ts, strict=True):
        for label in dict.fromkeys(r["label"] for r in rows):
            (row,) = [r for r in rows if r["label"] == label and r["t"] == t] or [None]
            if row is None:
                continue
            per_seed = list(zip(*row["per_label_accuracy"], strict=True))  # per string: seeds' values
            spread = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in per_seed]
            strings = range(len(per_seed))
            mean = row["per_label_accuracy_mean"]
            ax.errorbar(strings, mean, yerr=spread, marker="o", capsize=2, label=label)
        ax.set_title(f"t = {t}", fontsize=9)
        ax.set_xticks(range(len(rows[0]["per_label_accuracy_mean"])))
        ax.set_xlabel("string (0 = oldest)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("per-string accuracy (test)")
    axes[-1].legend(fontsize=7)
    figure.savefig(path, dpi=110)
    return path


def plot_losses(summaries: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Training loss against training tokens: one panel per arm label, one line per seed (every
    run of the harness is drawn; the trainer's log.jsonl)."""
    curves: dict[str, list[tuple[int, list[tuple[float, float]]]]] = {}
    for summary in summaries:
        job = summary["job"]
        log = Path(job["train_config"]["output_dir"]) / "stage2" / "log.jsonl"
        if not log.is_file():
            continue
        records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        tokens_per_step = job["tokens"] / job["steps"]
        points = [
            (r["step"] * tokens_per_step / 1e6, r["loss"]) for r in records if r.get("event") == "train"
        ]
        if points:
            curves.setdefault(job["label"], []).append((job["seed"], points))
    if not curves:
        return None
    figure, axes = _figure(width=3.2, height=3.0, ncols=len(curves))
    for ax, (label, runs) in zip(axes, curves.items(), strict=True):
        for seed, points in sorted(runs):
            ax.plot(*zip(*points, strict=True), linewidth=1, label=f"seed {seed}")
        ax.set_yscale("log")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("training tokens (M)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("training loss (per target token)")
    figure.savefig(path, dpi=110)
    return path


# ----------------------------------------------------------------------------- the driver
def run_harness(
    profile: Profile,
    jobs: Sequence[Job],
    out_dir: Path,
    *,
    parallel: int,
    in_process: bool = False,
    report_only: bool = False,
) -> dict[str, Any]:
    """Run the jobs not finished yet (parallel subprocesses, or sequentially in this process),
    then write OUT/results.json, OUT/results.md and the figures (accuracy.png, loss.png,
    per_string.png for Rule 110). Returns the results.
    report_only: run nothing, report the finished jobs (the others are listed as not run)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    pending = [job for job in jobs if _read_summary(Path(job.directory)) is None]
    _note(f"{len(jobs)} jobs, {len(jobs) - len(pending)} already done, {len(pending)} to run")
    if report_only:
        pass
    elif in_process:
        for job in pending:
            run_job(job)
    elif pending:
        pending.sort(key=lambda job: -job.cost)  # stable: equal costs keep the seed-major order
        with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
            list(pool.map(_run_subprocess, pending))
    wall_seconds = time.perf_counter() - began

    summaries = [s for s in (_read_summary(Path(job.directory)) for job in jobs) if s is not None]
    unfinished = [job.name for job in jobs if _read_summary(Path(job.directory)) is None]
    failed, not_run = ([], unfinished) if report_only else (unfinished, [])
    rows = aggregate(summaries)
    results = {
        "profile": dataclasses.asdict(profile),
        "machine": _machine(),
        "wall_seconds": wall_seconds,
        "jobs": [
            {
                "name": s["job"]["name"],
                "label": s["job"]["label"],
                "seed": s["job"]["seed"],
                "train_seconds": s["train_seconds"],
                "eval_seconds": s["eval_seconds"],
                "last_loss": s["last_loss"],
            }
            for s in summaries
        ],
        "failed": failed,
        "not_run": not_run,
        "summary": rows,
        "records": [
            {"label": s["job"]["label"], "arm": s["job"]["arm"], "seed": s["job"]["seed"], **r}
            for s in summaries
            for r in s["records"]
        ],
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    if profile.task == "rule110":
        layout = (
            f"{profile.num_strings} strings of W={profile.width} bits"
            + (" each after its t token" if profile.announces else "")
            + f", L={profile.window} hard eviction; trained on t in {list(jobs[0].train_t)}"
        )
    else:
        layout = (
            f"Depo {dict(profile.depo_options)}, L={profile.window} hard eviction; "
            f"trained on k in {list(jobs[0].train_t)}"
        )
    header = [
        f"# {profile.task} N-trend: profile `{profile.name}`",
        "",
        f"toy hybrid d={profile.hidden_size}, {profile.num_layers} layers, "
        f"GDN {profile.gdn_heads or profile.num_heads} head(s) of {gdn_head_dim(profile)}; {layout}; "
        f"{jobs[0].eval_examples} test examples per "
        f"{DIFFICULTY[profile.task]}. "
        + (
            "Report of finished jobs (nothing run now)."
            if report_only
            else f"Wall time {wall_seconds / 60:.1f} min ({len(pending)} jobs run now, "
            f"{parallel if not in_process else 1} at a time)."
        ),
        "",
    ]
    if failed:
        header += [f"**failed jobs**: {', '.join(failed)}", ""]
    if not_run:
        header += [f"**not run** (reported without them): {', '.join(not_run)}", ""]
    (out_dir / "results.md").write_text(markdown_table(rows, header))
    plot(rows, out_dir / "accuracy.png")
    plot_losses(summaries, out_dir / "loss.png")
    plot_per_string(rows, out_dir / "per_string.png")
    return results


def _machine() -> dict[str, Any]:
    import platform

    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    parser.add_argument(
        "--passes", type=int, nargs="+", help="N values of the sleep arm (default: the profile's)"
    )
    parser.add_argument("--seeds", type=int, help="seeds 0..K-1 per run (default: the profile's)")
    parser.add_argument("--arm", nargs="+", choices=ARMS, default=["sleep"], help="which arms to run")
    parser.add_argument(
        "--matched-seeds", type=int, help="seeds of the n1-long / n1-wide / full arms (default: --seeds)"
    )
    parser.add_argument("--n-best", type=int, help="N the matched arms match (default: max --passes)")
    parser.add_argument("--wide-gdn-heads", type=int, help="n1-wide GDN heads (default: FLOP-matched)")
    parser.add_argument("--max-steps", type=int, help="optimiser steps per run (default: the profile's)")
    parser.add_argument("--train-t", type=int, nargs="+", help="t values mixed uniformly in training")
    parser.add_argument("--eval-t", type=int, nargs="+", help="t values evaluated")
    parser.add_argument("--eval-examples", type=int, help="test examples per t")
    parser.add_argument("--jobs", type=int, help="parallel jobs (default: the profile's)")
    parser.add_argument("--threads", type=int, help="torch threads per job (default: the profile's)")
    parser.add_argument(
        "--out", type=Path, help="output directory (default runs/reproduce_rule110_<profile>)"
    )
    parser.add_argument("--in-process", action="store_true", help="run jobs one by one in this process")
    parser.add_argument(
        "--report-only", action="store_true", help="run nothing: report the jobs already finished"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the job plan and exit")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker is not None:
        run_job(Job(**json.loads(args.worker.read_text())))
        return 0
    profile = PROFILES[args.profile]
    out_dir = args.out if args.out is not None else REPO / "runs" / f"reproduce_rule110_{profile.name}"
    try:
        jobs = plan_jobs(
            profile,
            out_dir,
            passes=args.passes or profile.passes,
            seeds=args.seeds or profile.seeds,
            arms=args.arm,
            matched_seeds=args.matched_seeds,
            n_best=args.n_best,
            max_steps=args.max_steps,
            train_t=args.train_t,
            eval_t=args.eval_t,
            eval_examples=args.eval_examples,
            wide_gdn_heads=args.wide_gdn_heads,
            threads=args.threads,
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    parallel = args.jobs or profile.jobs
    profile = dataclasses.replace(profile, train_t=tuple(jobs[0].train_t), eval_t=tuple(jobs[0].eval_t))
    if args.dry_run:
        for job in jobs:
            print(f"{job.name}: {job.label}, seed {job.seed}, {job.steps} steps, {job.tokens:,} tokens")
        waves = math.ceil(len(jobs) / parallel)
        print(f"{len(jobs)} jobs, {parallel} at a time ({waves} waves); expected: {profile.expected}")
        return 0
    results = run_harness(
        profile, jobs, out_dir, parallel=parallel, in_process=args.in_process, report_only=args.report_only
    )
    seconds = results["wall_seconds"]
    print(f"wrote {out_dir}/results.json, results.md and the figures in {seconds:.0f} s")
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
