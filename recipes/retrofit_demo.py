"""The retrofit chain end to end at CPU scale: a pretrained checkpoint, converted, two-stage
trained, evaluated against its own full-attention and window-only versions.

    python recipes/retrofit_demo.py --config recipes/configs/retrofit_demo.yaml
    python recipes/retrofit_demo.py --config recipes/configs/retrofit_demo.yaml seeds=[0] jobs=1
    python recipes/retrofit_demo.py --config recipes/configs/retrofit_demo.yaml --dry-run

Per seed:
1. **Pretrain** a small transformers `LlamaForCausalLM` with full attention on the task (here a
   plain PyTorch loop: it is the user's model, not ours) and `save_pretrained` it with its
   tokenizer, like any Hub checkpoint: `OUT/seed<s>/base`.
2. **Convert** it as a user would (`sleep_retrofit.convert.convert`, what `sleep-retrofit convert`
   runs): fast-weight blocks inserted, window L: `OUT/seed<s>/converted`. The blocks are the
   identity at insertion, so the converted model with a window past the whole input *is* the base.
3. **Train** it with the toolkit's trainer, one job per arm: `two_stage` (stage 1: only the
   fast-weight blocks, hard eviction; stage 2: everything, sliding window) at every N of
   `passes`; `stage2_only` (the ablation without stage 1) and `lora` (stage 2 with PEFT LoRA on the
   base's projections, the blocks trained fully) at the largest N.
4. **Evaluate** each arm with the evaluation grid at its own N and window, plus two arms of the
   untrained conversion: `base (full attention)` (a window past the whole input, N = 1) and
   `base (window L)` (the base limited to the window, sliding, N = 1).

`OUT/results.json` (per arm and difficulty: exact match mean / std / per-seed values, per-string
accuracy, trainable parameters, wall times), `OUT/results.md` and `OUT/accuracy.png` collect the
jobs. Independent jobs run as parallel single-thread processes (`jobs`); a rerun skips finished
jobs and the trainer resumes unfinished ones. The YAML's keys: recipes/configs/retrofit_demo.yaml;
`key=value` overrides after `--config` (values parsed as YAML, dotted keys for nested ones).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
BASE_FULL = "base (full attention)"
BASE_WINDOW = "base (window L)"
ARMS = ("two_stage", "stage2_only", "lora")
SUMMARY = "summary.json"
REPORT_FILES = "results.json, per_seed.json, results.md, accuracy.png"
REQUIRED_KEYS = ("output_dir", "seeds", "jobs", "task", "base", "convert", "passes", "arms", "train", "eval")


# ----------------------------------------------------------------------------- configuration
def load_demo_config(path: Path, overrides: list[str]) -> dict[str, Any]:
    """The YAML file with dotted `key=value` overrides applied (values parsed as YAML)."""
    config = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(config, dict):
        raise ValueError(f"{path} is not a YAML mapping of the demo's sections")
    missing = [key for key in REQUIRED_KEYS if key not in config]
    if missing:
        raise ValueError(f"{path} lacks {missing} (see recipes/configs/retrofit_demo.yaml)")
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        *parents, leaf = key.split(".")
        section = config
        for name in parents:
            if not isinstance(section.get(name), dict):
                raise ValueError(f"override {item!r}: {name!r} is not a section of the config")
            section = section[name]
        if leaf not in section:
            raise ValueError(f"override {item!r}: unknown key {leaf!r} (known: {sorted(section)})")
        section[leaf] = yaml.safe_load(value)
    unknown = [a for a in config["arms"] if a not in ARMS]
    if unknown:
        raise ValueError(f"arms {unknown} are unknown; choose from {list(ARMS)}")
    if "lora" in config["arms"] and "two_stage" not in config["arms"]:
        raise ValueError("arm lora trains stage 2 from two_stage's stage-1 model: add two_stage to arms")
    if not config["passes"] or any(not isinstance(n, int) or n < 1 for n in config["passes"]):
        raise ValueError(f"passes must be a list of ints >= 1, got {config['passes']!r}")
    return config


def data_section(config: dict[str, Any], seed: int, examples: int) -> dict[str, Any]:
    """The trainer's `data` section: the task, its options and the uniform t (or k) mixture."""
    task = config["task"]
    data: dict[str, Any] = {
        "task": task["name"],
        "train_examples": examples,
        "eval_examples": 256,
        "options": dict(task["options"]),
        "seed": seed,
    }
    axis = {"rule110": "steps", "depo": "hops"}[task["name"]]
    values = list(task["train_t"])
    if task["name"] == "depo":
        data["options"]["hops"] = values
    elif len(values) == 1:
        data["options"][axis] = values[0]
    else:
        data["mixture"] = [{axis: v} for v in values]
    return data


def input_length(config: dict[str, Any]) -> int:
    """Columns of one collated test example (the full-attention window must reach over it)."""
    from sleep_retrofit.tasks import SleepCollator, make_task

    task = config["task"]
    axis = {"rule110": "steps", "depo": "hops"}[task["name"]]
    options = dict(task["options"])
    options[axis] = max(task["eval_t"]) if axis == "steps" else (max(task["eval_t"]),)
    from sleep_retrofit.train.data import FeatureDataset

    example = make_task(task["name"], **options).example(random.Random(0))
    batch = SleepCollator(config["convert"]["window"], 0)([FeatureDataset([example])[0]])
    return int(batch["input_ids"].shape[1])


# ----------------------------------------------------------------------------- 1. pretrain
def pretrain_base(config: dict[str, Any], seed: int, out: Path, progress: bool = True) -> Path:
    """Train a LlamaForCausalLM with full attention on the task; save it (and the task's
    tokenizer) to `out` through a staging directory. A finished `out` is kept as it is."""
    if (out / "config.json").is_file():
        return out
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm
    from transformers import LlamaConfig, LlamaForCausalLM

    from sleep_retrofit.tasks import SleepCollator
    from sleep_retrofit.train.config import config_from_dict
    from sleep_retrofit.train.data import EpochShuffleSampler, FeatureDataset, build_rows, training_tokenizer
    from sleep_retrofit.train.optim import cosine_schedule

    spec = config["base"]
    steps, batch_size = spec["steps"], spec["batch_size"]
    trainer_config = config_from_dict({"data": data_section(config, seed, steps * batch_size)})
    tokenizer = training_tokenizer(trainer_config, None)
    rows = build_rows(trainer_config, "train", trainer_config.data.train_examples, tokenizer)
    loader = DataLoader(
        FeatureDataset(rows),
        batch_size=batch_size,
        sampler=EpochShuffleSampler(len(rows), seed),
        # The sleep layout (context padded to whole windows): the base sees what the retrofit sees.
        collate_fn=SleepCollator(config["convert"]["window"], tokenizer=tokenizer),
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=spec["hidden_size"],
            intermediate_size=spec["intermediate_size"],
            num_hidden_layers=spec["num_layers"],
            num_attention_heads=spec["num_heads"],
            num_key_value_heads=spec["num_heads"],
            max_position_embeddings=spec["max_position_embeddings"],
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            tie_word_embeddings=False,
        )
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec["lr"], betas=(0.9, 0.95))
    schedule = cosine_schedule(optimizer, steps, spec["warmup_steps"], min_lr_ratio=0.0)
    model.train()
    step, log = 0, []
    bar = tqdm(total=steps, desc=f"pretrain base (seed {seed})", disable=None if progress else True)
    while step < steps:
        loader.sampler.set_epoch(step // max(1, len(loader)))
        for batch in loader:
            loss = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
            ).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            bar.update()
            if step % 25 == 0 or step == steps:
                log.append({"step": step, "loss": loss.item()})
                bar.set_postfix(loss=f"{loss.item():.3f}")
            if bar.disable and step % max(1, steps // 10) == 0:
                # no bar (a parallel worker, or output that is not a terminal): a line per tenth
                print(f"pretrain base (seed {seed}): step {step}/{steps}, loss {loss.item():.3f}", flush=True)
            if step == steps:
                break
    bar.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "pretrain_log.json").write_text(json.dumps(log) + "\n")
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


# ----------------------------------------------------------------------------- 2. convert
def convert_base(config: dict[str, Any], base: Path, out: Path) -> Path:
    """`sleep-retrofit convert` of the pretrained base (kept when it exists)."""
    if (out / "config.json").is_file():
        return out
    from sleep_retrofit.convert import convert

    options = config["convert"]
    return convert(
        base,
        out,
        fast_weights=options.get("fast_weights"),
        insert_at=options.get("insert_at"),
        window=options["window"],
        passes=1,
        eviction="sliding",
        progress=False,
    )


# ----------------------------------------------------------------------------- 3./4. jobs
def plan_jobs(config: dict[str, Any], out: Path) -> list[dict[str, Any]]:
    """Every evaluation (and training) job of the run, one per (arm, N, seed)."""
    window = config["convert"]["window"]
    full_window = input_length(config)
    largest = max(config["passes"])
    jobs = []
    for seed in config["seeds"]:
        converted = out / f"seed{seed}" / "converted"
        jobs.append(_job(BASE_FULL, "base_full", seed, 1, converted, None, full_window, out))
        jobs.append(_job(BASE_WINDOW, "base_window", seed, 1, converted, None, window, out))
        runs = []
        if "two_stage" in config["arms"]:
            runs += [
                (f"two-stage N={n}", f"two_stage_N{n}", n, ["stage1", "stage2"], "full")
                for n in config["passes"]
            ]
        if "stage2_only" in config["arms"]:
            runs.append((f"stage 2 only N={largest}", f"stage2_only_N{largest}", largest, ["stage2"], "full"))
        if "lora" in config["arms"]:
            runs.append((f"two-stage LoRA N={largest}", f"lora_N{largest}", largest, ["stage2"], "lora"))
        for label, name, n, stages, finetune in runs:
            directory = out / f"seed{seed}" / name
            # LoRA's stage 2 starts from the full two-stage run's stage-1 model: the same warm-up,
            # so the two arms differ only in how stage 2 trains (and stage 1 is not paid twice).
            source = (
                out / f"seed{seed}" / f"two_stage_N{largest}" / "train" / "stage1" / "model"
                if finetune == "lora"
                else converted
            )
            train = json.loads(json.dumps(config["train"]))
            train.update({"output_dir": str(directory / "train"), "seed": seed, "stages": stages})
            train["model"] = {**train.get("model", {}), "source": str(source), "passes": n, "window": window}
            train["data"] = data_section(config, seed, _examples(config, stages))
            train["stage2"] = {**train["stage2"], "finetune": finetune}
            job = _job(label, name, seed, n, directory / "train" / "model", train, window, out)
            if finetune == "lora":
                job["after"] = str(source.parent / "training_complete.json")
            jobs.append(job)
    return jobs


def _examples(config: dict[str, Any], stages: list[str]) -> int:
    """Fresh examples for the longest stage (each stage takes an epoch's worth of max_steps)."""
    steps = max(config["train"][stage]["max_steps"] for stage in stages)
    return steps * config["train"]["batch_size"]


def _job(label, name, seed, passes, model, train, window, out) -> dict[str, Any]:
    directory = out / f"seed{seed}" / name
    stages = train["stages"] if train else []
    cost = passes * sum(train[s]["max_steps"] for s in stages) if train else 1
    return {
        "label": label,
        "name": f"seed{seed}/{name}",
        "seed": seed,
        "passes": passes,
        "model": str(model),
        "train": train,
        "window": window,
        "directory": str(directory),
        "cost": cost,
    }


def run_job(job: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """Train (when the job trains) and evaluate one arm; writes and returns its summary."""
    from sleep_retrofit.evaluation import EvalSpec, run_grid
    from sleep_retrofit.train import train
    from sleep_retrofit.train.config import config_from_dict

    directory = Path(job["directory"])
    summary_path = directory / SUMMARY
    if summary_path.is_file():
        return json.loads(summary_path.read_text())
    directory.mkdir(parents=True, exist_ok=True)
    if job.get("after"):  # jobs run longest first, so the stage 1 this waits for started earlier
        while not Path(job["after"]).is_file():
            time.sleep(5)
    print(f"{job['name']}: started ({job['label']}; training logs in {directory}/train)", flush=True)
    began = time.perf_counter()
    trainable = None
    if job["train"] is not None:
        train(config_from_dict(job["train"]))
        logs = sorted((directory / "train").glob("stage*/log.jsonl"))
        starts = [
            json.loads(line) for log in logs for line in log.read_text().splitlines() if '"start"' in line
        ]
        trainable = {s["stage"]: s.get("trainable_parameters") for s in starts}
    train_seconds = time.perf_counter() - began
    task = config["task"]
    axis = {"rule110": "steps", "depo": "hops"}[task["name"]]
    began = time.perf_counter()
    grid = run_grid(
        EvalSpec(
            model=job["model"],
            tasks=(task["name"],),
            passes=(job["passes"],),
            **{axis: tuple(task["eval_t"])},
            num_examples=config["eval"]["examples"],
            batch_size=config["eval"]["batch_size"],
            out=directory / "eval",
            window=job["window"],
            eviction="sliding",
            task_options={task["name"]: dict(task["options"])},
            device="cpu",
            progress=False,
        )
    )
    summary = {
        "job": job,
        "train_seconds": train_seconds,
        "eval_seconds": time.perf_counter() - began,
        "trainable_parameters": trainable,
        "records": grid.records,
    }
    summary_path.write_text(json.dumps(summary, indent=1, default=str) + "\n")
    minutes = (summary["train_seconds"] + summary["eval_seconds"]) / 60
    print(f"{job['name']}: done in {minutes:.1f} min", flush=True)
    return summary


def _prepare_seed(config: dict[str, Any], seed: int, out: Path, progress: bool) -> float:
    """Pretrain and convert one seed's base; returns the pretraining wall seconds."""
    began = time.perf_counter()
    base = pretrain_base(config, seed, out / f"seed{seed}" / "base", progress=progress)
    convert_base(config, base, out / f"seed{seed}" / "converted")
    return time.perf_counter() - began


def _init_worker() -> None:
    """A worker process: one torch thread (parallel jobs share the cores), and no per-file
    load/save bars from transformers (every job's would drown the report)."""
    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(1)
    hf_logging.disable_progress_bar()


def run_all(
    config: dict[str, Any], jobs: list[dict[str, Any]], out: Path
) -> tuple[list[float], list[dict[str, Any]]]:
    """Prepare every seed's base, then run the jobs, longest first: in this process when
    `jobs` is 1, else in that many fresh single-thread processes. Returns the seeds' pretraining
    (+ conversion) seconds and the jobs' summaries."""
    workers = max(1, int(config["jobs"]))
    seeds = config["seeds"]
    pending = sorted(jobs, key=lambda job: -job["cost"])
    if workers == 1:
        prepared = [_prepare_seed(config, seed, out, True) for seed in seeds]
        return prepared, [run_job(job, config) for job in pending]
    # spawn: fresh interpreters, so each worker really runs one torch thread
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker) as pool:
        prepared = list(
            pool.map(_prepare_seed, [config] * len(seeds), seeds, [out] * len(seeds), [False] * len(seeds))
        )
        return prepared, list(pool.map(run_job, pending, [config] * len(pending)))


# ----------------------------------------------------------------------------- report
def aggregate(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (arm label, difficulty): exact match over seeds (mean, std, values) and the per-string
    accuracy averaged over seeds."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for summary in summaries:
        for record in summary["records"]:
            groups.setdefault((summary["job"]["label"], record["difficulty"]), []).append(
                {**record, "seed": summary["job"]["seed"]}
            )
    order = list(dict.fromkeys(s["job"]["label"] for s in summaries))
    rows = []
    for (label, t), records in sorted(groups.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1])):
        records.sort(key=lambda r: r["seed"])
        key = "exact_match" if "exact_match" in records[0] else "accuracy"
        values = [r[key] for r in records]
        row = {
            "label": label,
            "t": t,
            "seeds": [r["seed"] for r in records],
            "metric": key,
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values,
        }
        if "per_label_accuracy" in records[0]:
            row["per_string"] = [
                statistics.fmean(v) for v in zip(*(r["per_label_accuracy"] for r in records), strict=True)
            ]
        rows.append(row)
    return rows


def _loss_curve(rows: list[dict[str, Any]]) -> list[list[float]]:
    return [[row["step"], round(row["loss"], 4)] for row in rows]


def per_seed(config: dict[str, Any], summaries: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    """What the means in results.json hide: per job its records per t (per-string accuracy
    included), training minutes and the loss curve of every stage it trained; per seed the base's
    pretraining loss curve."""
    detail: dict[str, Any] = {}
    for summary in summaries:
        job = summary["job"]
        entry = {
            "records": [
                {k: record[k] for k in ("difficulty", "exact_match", "per_label_accuracy", "loss")}
                for record in summary["records"]
            ],
            "train_minutes": round(summary["train_seconds"] / 60, 2),
        }
        for log in sorted((Path(job["directory"]) / "train").glob("stage*/log.jsonl")):
            events = [json.loads(line) for line in log.read_text().splitlines()]
            entry[f"{log.parent.name}_loss"] = _loss_curve([e for e in events if e.get("event") == "train"])
        detail[job["name"]] = entry
    for seed in config["seeds"]:
        log = out / f"seed{seed}" / "base" / "pretrain_log.json"
        if log.is_file():
            detail[f"seed{seed}/base_pretrain_loss"] = _loss_curve(json.loads(log.read_text()))
    return detail


def write_report(
    config: dict[str, Any],
    summaries: list[dict[str, Any]],
    out: Path,
    wall: float | None,
    prepared: list[float | None],
) -> None:
    """results.json, per_seed.json, results.md and accuracy.png of the finished jobs. `wall`: the run's wall
    seconds (None for --report-only); `prepared`: per seed, the seconds its base took to pretrain
    and convert in this run (about 0 when it existed; None when unknown)."""
    rows = aggregate(summaries)
    labels = list(dict.fromkeys(r["label"] for r in rows))
    ts = sorted({r["t"] for r in rows})
    cell = {(r["label"], r["t"]): r for r in rows}
    trainable, minutes = {}, {}
    for summary in summaries:
        counts = summary.get("trainable_parameters") or {}
        trainable.setdefault(summary["job"]["label"], counts)
        spent = (summary["train_seconds"] + summary["eval_seconds"]) / 60
        minutes.setdefault(summary["job"]["label"], []).append(spent)
    results = {
        "config": config,
        "wall_seconds": wall,
        "prepare_seconds": dict(zip(config["seeds"], prepared, strict=True)),
        "summary": rows,
        "jobs": [
            {k: s[k] for k in ("train_seconds", "eval_seconds", "trainable_parameters")}
            | {"name": s["job"]["name"]}
            for s in summaries
        ],
    }
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    (out / "per_seed.json").write_text(json.dumps(per_seed(config, summaries, out), indent=1) + "\n")
    axis = {"rule110": "t", "depo": "k"}[config["task"]["name"]]
    metric = rows[0]["metric"].replace("_", " ") if rows else "exact match"
    lines = [
        "# Retrofit demo",
        "",
        f"{metric} (test, mean ± std over seeds {config['seeds']}); "
        f"window L = {config['convert']['window']}; "
        + (f"wall {wall / 60:.1f} min" if wall is not None else "report of the finished jobs"),
        "",
        "| arm | "
        + " | ".join(f"{axis}={t}" for t in ts)
        + " | trainable parameters (stage 1 / stage 2) | minutes per seed (train + eval) |",
        "|---|" + "---:|" * len(ts) + "---:|---:|",
    ]
    for label in labels:
        cells = [
            f"{cell[(label, t)]['mean']:.3f} ± {cell[(label, t)]['std']:.3f}" if (label, t) in cell else "–"
            for t in ts
        ]
        counts = trainable.get(label) or {}
        count = " / ".join(f"{counts[s]:,}" for s in sorted(counts)) or "–"
        spent = " / ".join(f"{m:.1f}" for m in minutes[label])
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {count} | {spent} |")
    if any("per_string" in r for r in rows):
        lines += ["", "per-string accuracy (string 0 = the oldest), mean over seeds:", ""]
        lines += ["| arm | " + " | ".join(f"{axis}={t}" for t in ts) + " |", "|---|" + "---:|" * len(ts)]
        for label in labels:
            cells = [
                " / ".join(f"{v:.2f}" for v in cell[(label, t)]["per_string"]) if (label, t) in cell else "–"
                for t in ts
            ]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    _plot(rows, out / "accuracy.png", axis)


def _plot(rows: list[dict[str, Any]], path: Path, axis: str) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.5, 4), layout="constrained")
    ax = figure.subplots()
    for label in dict.fromkeys(r["label"] for r in rows):
        points = sorted((r["t"], r["mean"], r["std"]) for r in rows if r["label"] == label)
        ax.errorbar(*zip(*points, strict=True), marker="o", capsize=3, label=label)
    ax.set_xlabel(axis)
    ax.set_ylabel(f"{rows[0]['metric'].replace('_', ' ')} (test)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    figure.savefig(path, dpi=120)


# ----------------------------------------------------------------------------- driver
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("overrides", nargs="*", help="key=value (YAML values, dotted keys)")
    parser.add_argument("--dry-run", action="store_true", help="print the jobs and exit")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="write results.json/md and the plot from the jobs finished so far, run nothing",
    )
    args = parser.parse_args(argv)
    try:
        config = load_demo_config(args.config, args.overrides)
    except (OSError, ValueError, yaml.YAMLError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(config["output_dir"])
    jobs = plan_jobs(config, out)
    if args.dry_run:
        for job in jobs:
            print(f"{job['name']}: {job['label']}, N={job['passes']}, window {job['window']}")
        return 0
    if args.report_only:
        finished = [Path(job["directory"]) / SUMMARY for job in jobs]
        summaries = [json.loads(path.read_text()) for path in finished if path.is_file()]
        if not summaries:
            print(f"error: no finished job under {out}", file=sys.stderr)
            return 2
        write_report(config, summaries, out, None, [None] * len(config["seeds"]))
        print(f"wrote {REPORT_FILES} in {out} from {len(summaries)} of {len(jobs)} jobs")
        return 0
    began = time.perf_counter()
    prepared, summaries = run_all(config, jobs, out)
    by_name = {s["job"]["name"]: s for s in summaries}
    ordered = [by_name[job["name"]] for job in jobs]
    write_report(config, ordered, out, time.perf_counter() - began, prepared)
    minutes = (time.perf_counter() - began) / 60
    print(f"wrote {REPORT_FILES} in {out} in {minutes:.1f} min")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
