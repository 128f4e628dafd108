"""The two-stage sleep trainer on Accelerate.

    python recipes/rule110.py --config recipes/configs/rule110_tiny.yaml stage1.max_steps=50
    accelerate launch recipes/rule110.py --config ...        (DDP on GPUs, or --cpu --num_processes 2)

Stage 1 (warm-up): only the fast-weight blocks train, under hard eviction, with N passes.
Stage 2: sliding-window (or hard) sleep; the full model, LoRA adapters (PEFT) or the fast
weights alone train, the fast-weight blocks always fully. Each stage lives in its own
directory ``{output_dir}/{stage}/``: ``checkpoints/checkpoint_<i>`` (Accelerate's save_state,
every ``save_every`` optimiser steps, ``save_total_limit`` kept), ``log.jsonl`` (one JSON
object per logged step and evaluation), ``tensorboard/`` (when tensorboard is installed) and
``model/`` (the stage's result as a converted checkpoint + tokenizer). A finished stage is
skipped on a rerun and the next starts from its ``model/``; an unfinished one resumes from its
latest readable checkpoint. ``{output_dir}/model`` is the final model, loadable with
``AutoModelForCausalLM.from_pretrained`` after ``import sleep_retrofit``.

The loss is Algorithm 1's: context chunks are consolidated with N passes (full backprop
through every pass and chunk) and the cross-entropy is taken on target tokens only.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from ..converted import is_converted_checkpoint
from ..publish import recover_leftovers, replace_directory, staging_directory
from ..tasks import SleepCollator
from .checkpoints import check_resumable, find_checkpoints, load_latest, save_checkpoint
from .config import STAGES, ConfigError, StageConfig, TrainConfig
from .data import EpochShuffleSampler, FeatureDataset, build_rows, training_tokenizer
from .model_setup import (
    build_model,
    check_vocabulary,
    enable_activation_checkpointing,
    fast_weight_parameter_names,
    prepare_trainable,
    save_final_model,
)
from .objectives import distillation_loss, frozen_teacher, training_loss
from .optim import build_optimizers, cosine_schedule
from .periodic_evaluation import evaluate_model

__all__ = [
    "StageResult",
    "TrainingDiverged",
    "TrainingProgress",
    "find_checkpoints",
    "train",
]

MODEL_DIR = "model"
ADAPTER_DIR = "adapter"
LORA_DIR = "lora"  # a LoRA stage's adapters, unmerged, when save_adapter is on
DONE_FILE = "training_complete.json"
LOG_FILE = "log.jsonl"


class TrainingProgress:
    """Where the loop is: optimiser steps done, the epoch and the batches consumed in it
    (saved with every checkpoint as JSON, see checkpoints.py)."""

    def __init__(self) -> None:
        self.step = 0
        self.epoch = 0
        self.batch = 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step, "epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step, self.epoch, self.batch = int(state["step"]), int(state["epoch"]), int(state["batch"])


class _Schedules:
    """The LR schedules of a stage's optimisers, checkpointed as one object."""

    def __init__(self, schedulers: list[torch.optim.lr_scheduler.LRScheduler]):
        self.schedulers = schedulers

    def step(self) -> None:
        for scheduler in self.schedulers:
            scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return {"schedulers": [s.state_dict() for s in self.schedulers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for scheduler, saved in zip(self.schedulers, state["schedulers"], strict=True):
            scheduler.load_state_dict(saved)

    def last_lrs(self) -> list[float]:
        return [lr for s in self.schedulers for lr in s.get_last_lr()]


@dataclass
class StageResult:
    """What one stage did: its directory, steps, last training loss and evaluations."""

    stage: str
    directory: Path
    steps: int
    resumed_from: Path | None
    last_loss: float | None
    evaluations: list[dict[str, Any]]
    skipped: bool = False


class TrainingDiverged(RuntimeError):
    """The loss or the gradients became NaN or infinite: training stopped before the update."""


def _diverged(stage: str, what: str, value: float, step: int, stage_dir: Path) -> str:
    kept = find_checkpoints(stage_dir)
    last = f"the last checkpoint ({kept[-1].name}) is kept" if kept else "no checkpoint was written yet"
    return (
        f"{stage}: the {what} is {value} at step {step}, so training stopped before updating the "
        f"weights; {last} and nothing was published. Lower the learning rate (or check the data) "
        "and rerun"
    )


def _tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        try:
            import tensorboardX  # noqa: F401
        except ImportError:
            return False
    return True


def _on_cpu(config: TrainConfig) -> bool:
    """Without CUDA, cpu=True is what makes a torchrun-launched group use gloo (MULTI_CPU);
    otherwise every process would think it is alone (and the main one)."""
    return config.cpu or not torch.cuda.is_available()


def _accelerator(config: TrainConfig, stage_dir: Path):
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.utils import ProjectConfiguration

    # Checkpoint names and rotation are ours (checkpoints.py): Accelerate's rotation deletes the
    # oldest checkpoint before the new one is written.
    project = ProjectConfiguration(project_dir=str(stage_dir), logging_dir=str(stage_dir / "tensorboard"))
    return Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        cpu=_on_cpu(config),
        log_with="tensorboard" if _tensorboard_available() else None,
        project_config=project,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=config.find_unused_parameters)],
    )


def _stage_settings(config: TrainConfig, name: str) -> tuple[int, str]:
    stage = config.stage(name)
    passes = stage.passes if stage.passes is not None else config.model.passes
    eviction = (
        stage.eviction
        if stage.eviction is not None
        else ("hard" if name == "stage1" else config.model.eviction)
    )
    return passes, eviction


def _log(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def run_stage(
    config: TrainConfig,
    name: str,
    *,
    init_from: Path | None = None,
    stop_after: int | None = None,
) -> StageResult:
    """Run (or resume, or skip when finished) one stage. `init_from` is a converted checkpoint to
    start from (the previous stage's model); `stop_after` stops after that many optimiser steps
    without finishing the stage, as a crash would (tests use it)."""
    from tqdm.auto import tqdm

    stage: StageConfig = config.stage(name)
    output_dir = Path(config.output_dir).expanduser()
    stage_dir = output_dir / name
    if (stage_dir / DONE_FILE).is_file() and (stage_dir / MODEL_DIR / "config.json").is_file():
        check_resumable(stage_dir, config, finished=True)
        done = json.loads((stage_dir / DONE_FILE).read_text())
        return StageResult(name, stage_dir, done["steps"], None, done.get("last_loss"), [], skipped=True)

    passes, eviction = _stage_settings(config, name)
    window = config.model.window
    # Everything that can fail on bad input fails here, before the first step.
    model, model_tokenizer = build_model(config, init_from=init_from)
    tokenizer = training_tokenizer(config, model_tokenizer)
    check_vocabulary(tokenizer, model)
    limit = getattr(model.config, "max_position_embeddings", None)
    if isinstance(limit, int) and window > limit:  # the collator would pad every row to L: 1e8 is OOM
        raise ConfigError(
            f"model.window {window} is larger than the model's position limit (max_position_embeddings "
            f"{limit}); choose a window in 1..{limit}"
        )
    finetune = "fast_weights" if name == "stage1" else stage.finetune
    if name == "stage1" and not fast_weight_parameter_names(model):
        raise ConfigError(
            f"stage 1 trains only fast-weight blocks, but model.source={config.model.source!r} has none "
            "(convert it with fast_weights=jet|gdn|mamba2, or run stages=[stage2])"
        )
    train_rows = build_rows(config, "train", config.data.train_examples, tokenizer)
    eval_rows = build_rows(config, "validation", config.data.eval_examples, tokenizer)
    # The teacher is the base as the stage starts (before LoRA wraps it or stage 2 trains it).
    teacher = frozen_teacher(model) if stage.objective == "distill" else None
    model = prepare_trainable(model, finetune, stage.lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if config.gradient_checkpointing:
        enable_activation_checkpointing(model)
    model.train()

    accelerator = _accelerator(config, stage_dir)
    torch.manual_seed(config.seed)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    collator = SleepCollator(window, pad_id)
    progress = TrainingProgress()
    # The data order follows the loop's own epoch count (see EpochShuffleSampler).
    sampler = EpochShuffleSampler(len(train_rows), config.seed, epoch_of=lambda: progress.epoch)
    loader = DataLoader(
        FeatureDataset(train_rows), batch_size=config.batch_size, sampler=sampler, collate_fn=collator
    )
    optimizers = build_optimizers(
        model,
        optimizer=stage.optimizer,
        muon_lr=stage.muon_lr,
        adamw_lr=stage.adamw_lr,
        weight_decay=stage.weight_decay,
    )
    if teacher is not None:
        teacher.to(accelerator.device)
    prepared = accelerator.prepare(model, loader, *optimizers)
    model, loader, optimizers = prepared[0], prepared[1], list(prepared[2:])

    batches_per_epoch = len(loader)
    steps_per_epoch = max(1, math.ceil(batches_per_epoch / config.gradient_accumulation_steps))
    total_steps = stage.max_steps or max(1, math.ceil(stage.epochs * steps_per_epoch))
    schedules = _Schedules(
        [
            cosine_schedule(o.optimizer, total_steps, stage.warmup_steps, stage.min_lr_ratio)
            for o in optimizers
        ]
    )

    resumed_from = None
    if config.resume:
        check_resumable(stage_dir, config)
        loaded = load_latest(accelerator, stage_dir)
        if loaded is not None:
            resumed_from, state = loaded
            progress.load_state_dict(state["progress"])
            schedules.load_state_dict(state["schedules"])

    log_path = stage_dir / LOG_FILE
    main = accelerator.is_main_process
    if main:
        stage_dir.mkdir(parents=True, exist_ok=True)
        (stage_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2, default=str))
    if accelerator.log_with:
        accelerator.init_trackers(name, config={"stage": name, "passes": passes, "eviction": eviction})
    if main:
        _log(
            log_path,
            {
                "event": "start",
                "stage": name,
                "step": progress.step,
                "total_steps": total_steps,
                "resumed_from": str(resumed_from) if resumed_from else None,
                "passes": passes,
                "window": window,
                "eviction": eviction,
                "finetune": finetune,
                "trainable_parameters": trainable,
                "processes": accelerator.num_processes,
            },
        )

    bar = tqdm(
        total=total_steps,
        initial=progress.step,
        desc=name,
        disable=not (main and config.progress),
        dynamic_ncols=True,
    )
    evaluations: list[dict[str, Any]] = []
    last_loss: float | None = None
    running: list[float] = []
    grad_norm: torch.Tensor | None = None  # of the last optimiser step, before clipping
    began = time.perf_counter()
    unwrapped = accelerator.unwrap_model(model)

    def evaluate(step: int) -> None:
        if main:
            record = evaluate_model(unwrapped, config, eval_rows, tokenizer, passes, window, eviction)
            record.update({"event": "eval", "stage": name, "step": step})
            evaluations.append(record)
            _log(log_path, record)
            if accelerator.log_with:
                accelerator.log(
                    {f"eval/{k}": v for k, v in record.items() if isinstance(v, float)}, step=step
                )
            model.train()
        accelerator.wait_for_everyone()

    while progress.step < total_steps and not (stop_after is not None and progress.step >= stop_after):
        skip = progress.batch
        batches = accelerator.skip_first_batches(loader, skip) if skip else loader
        for batch in batches:
            with accelerator.accumulate(model):
                if teacher is None:
                    loss = training_loss(model, batch, passes, window, eviction)
                else:
                    loss = distillation_loss(
                        model,
                        teacher,
                        batch,
                        passes,
                        window,
                        eviction,
                        weight=stage.distill_weight,
                        temperature=stage.distill_temperature,
                    )
                value = float(loss.detach())
                if config.max_grad_norm is None and not math.isfinite(value):
                    raise TrainingDiverged(_diverged(name, "loss", value, progress.step + 1, stage_dir))
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm is not None:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                    # the norm of the all-reduced gradients: every process stops together
                    if not math.isfinite(float(grad_norm)):
                        raise TrainingDiverged(
                            _diverged(name, "gradient norm", float(grad_norm), progress.step + 1, stage_dir)
                        )
                for optimizer in optimizers:
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
            progress.batch += 1
            running.append(value)
            if not accelerator.sync_gradients:
                continue
            schedules.step()
            progress.step += 1
            if progress.batch >= batches_per_epoch:
                progress.epoch, progress.batch = progress.epoch + 1, 0
            last_loss = sum(running) / len(running)
            running.clear()
            bar.update(1)
            bar.set_postfix(loss=f"{last_loss:.4f}")
            if progress.step % config.log_every == 0 or progress.step == total_steps:
                mean_loss = float(
                    accelerator.reduce(torch.tensor(last_loss, device=accelerator.device), "mean")
                )
                record = {
                    "event": "train",
                    "stage": name,
                    "step": progress.step,
                    "epoch": progress.epoch,
                    "loss": mean_loss,
                    "lr": schedules.last_lrs(),
                    "seconds": round(time.perf_counter() - began, 3),
                }
                if grad_norm is not None:
                    record["grad_norm"] = float(grad_norm)
                if main:
                    _log(log_path, record)
                if accelerator.log_with:
                    accelerator.log(
                        {"train/loss": mean_loss, "train/lr": record["lr"][0]}, step=progress.step
                    )
            if progress.step % config.save_every == 0 and progress.step < total_steps:
                state = {"progress": progress.state_dict(), "schedules": schedules.state_dict()}
                save_checkpoint(accelerator, stage_dir, state, config.save_total_limit)
            if config.eval_every and progress.step % config.eval_every == 0 and progress.step < total_steps:
                evaluate(progress.step)
            if progress.step >= total_steps or (stop_after is not None and progress.step >= stop_after):
                break
        else:
            # The loader ran out: the epoch's last step has already advanced the epoch (and a
            # checkpoint taken there says so); advancing it again here would make a resumed run
            # read another epoch's order than the uninterrupted one. Only a loader that ended
            # without that (a length mismatch) is moved on here.
            if progress.batch:
                progress.epoch, progress.batch = progress.epoch + 1, 0
    bar.close()

    if progress.step < total_steps:  # stopped early on purpose (stop_after): not finished
        _finish_trackers(accelerator)
        return StageResult(name, stage_dir, progress.step, resumed_from, last_loss, evaluations)

    evaluate(progress.step)
    accelerator.wait_for_everyone()
    if main:
        lora_dir = stage_dir / LORA_DIR if config.save_adapter else None
        save_final_model(accelerator.unwrap_model(model), tokenizer, stage_dir / MODEL_DIR, lora_dir)
        summary = {"stage": name, "steps": progress.step, "last_loss": last_loss}
        (stage_dir / DONE_FILE).write_text(json.dumps(summary))
        _log(log_path, {"event": "done", **summary})
    accelerator.wait_for_everyone()
    _finish_trackers(accelerator)
    return StageResult(name, stage_dir, progress.step, resumed_from, last_loss, evaluations)


def _finish_trackers(accelerator: Any) -> None:
    """end_training() without its destroy_process_group(): the next stage reuses the group."""
    for tracker in accelerator.trackers:
        tracker.finish()


def train(config: TrainConfig, *, stop_after: int | None = None) -> list[StageResult]:
    """Run the configured stages in order; each stage after the first starts from the previous
    stage's model (``{output_dir}/{previous}/model``, when it exists). The last stage's model is
    also written to ``{output_dir}/model``. Returns one :class:`StageResult` per stage run."""
    output_dir = Path(config.output_dir).expanduser()
    results = []
    for name in config.stages:
        previous = STAGES[: STAGES.index(name)]
        init_from = None
        for earlier in reversed(previous):
            candidate = output_dir / earlier / MODEL_DIR
            if (candidate / "config.json").is_file():
                init_from = candidate
                break
        result = run_stage(config, name, init_from=init_from, stop_after=stop_after)
        results.append(result)
        if result.steps < _total_steps_hint(result):
            return results
    final_source = output_dir / config.stages[-1] / MODEL_DIR
    _publish_final(final_source, output_dir / MODEL_DIR, cpu=_on_cpu(config))
    if config.save_adapter:
        _publish_adapter(config, output_dir / MODEL_DIR, output_dir / ADAPTER_DIR)
    return results


def _lora_of_run(config: TrainConfig) -> Path | None:
    """The LoRA adapters a stage of this run saved for save_adapter (None when no stage is LoRA)."""
    for name in config.stages:
        if config.stage(name).finetune == "lora":
            lora = Path(config.output_dir).expanduser() / name / LORA_DIR
            if not (lora / "adapter_config.json").is_file():
                raise ConfigError(
                    f"save_adapter: {lora} is missing: {name} finished in a run without save_adapter; "
                    f"delete {lora.parent} to train it again"
                )
            return lora
    return None


def _check_adapter_reproduces(adapter: Path, model: torch.nn.Module) -> None:
    """The adapter, loaded as a user would, holds the trained model's weights (merging LoRA in the
    base's dtype rounds like that dtype does)."""
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(adapter).state_dict()
    for name, tensor in model.state_dict().items():
        try:
            torch.testing.assert_close(loaded[name], tensor)
        except AssertionError:
            raise ConfigError(f"save_adapter: the adapter does not load back to the trained {name}") from None


def _base_reference(source: str) -> str:
    """What an adapter of a model trained from `source` refers to: the base itself (a preset, a
    local base directory or a Hub id), or the base an adapter-only conversion refers to."""
    from ..adapters import is_adapter_checkpoint
    from ..presets import is_preset

    path = Path(source).expanduser()
    if is_preset(source) or not path.exists():
        return source
    if is_adapter_checkpoint(path):
        return json.loads((path / "config.json").read_text())["base_reference"]["source"]
    if is_converted_checkpoint(path):
        raise ConfigError(
            f"save_adapter: model.source {source!r} is a full converted checkpoint, which names no base; "
            "start from the base itself or from `sleep-retrofit convert --adapter-only`"
        )
    return str(path.resolve())


def _publish_adapter(config: TrainConfig, model_dir: Path, target: Path) -> None:
    """{output_dir}/adapter: the final model's blocks, its LoRA adapters (unmerged, when a stage
    trained LoRA) and sleep config, referring to the base as stored (its hash, its dtype). Checked
    before it is published: training left every other base weight as stored, and the adapter
    loads back to the trained model. Main process only; written beside and renamed into place."""
    from accelerate import PartialState
    from transformers import AutoModelForCausalLM

    from ..adapters import load_referenced_base, lora_parameter_names, save_adapter_checkpoint, weights_sha256

    state = PartialState(cpu=_on_cpu(config))
    if state.is_main_process:
        reference = _base_reference(config.model.source)
        stored = load_referenced_base(reference)
        dtype = next(stored.parameters()).dtype  # the blocks as a load in the base's dtype has them
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
        lora = _lora_of_run(config)
        adapted = lora_parameter_names(lora) if lora is not None else set()
        trained = model.base.state_dict()
        for name, tensor in stored.state_dict().items():
            if f"base.{name}" not in adapted and not torch.equal(trained[name].to(tensor.dtype), tensor):
                raise ConfigError(
                    f"save_adapter: training changed the base's {name}; the adapter would not fit it"
                )
        staging = staging_directory(target)
        try:
            save_adapter_checkpoint(model, staging, reference, base_sha256=weights_sha256(stored), lora=lora)
            for file in model_dir.iterdir():  # the tokenizer files
                if file.name.startswith("tokenizer") or file.name in (
                    "special_tokens_map.json",
                    "vocab.json",
                ):
                    shutil.copy2(file, staging / file.name)
            if lora is not None:
                _check_adapter_reproduces(staging, model)
            replace_directory(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    state.wait_for_everyone()


def _total_steps_hint(result: StageResult) -> int:
    """0 when the stage finished (so the loop goes on), else a number above its steps."""
    return 0 if (result.directory / DONE_FILE).is_file() else result.steps + 1


def _publish_final(source: Path, target: Path, *, cpu: bool) -> None:
    """Copy the last stage's model to ``{output_dir}/model``: the main process only (with the
    same cpu flag as the Accelerator, or on a CPU group every rank would be "main" and race),
    into a staging directory renamed into place (the old model moved aside first, deleted only
    once the new one is there), so a reader never sees half a model and a kill loses neither.
    Leftovers of a killed publish are cleaned (or the old model put back) first, with a warning."""
    from accelerate import PartialState

    state = PartialState(cpu=cpu)
    if state.is_main_process and source.is_dir():
        for line in recover_leftovers(target, is_converted_checkpoint):
            warnings.warn(f"publishing {target}: {line}", stacklevel=3)
        staging = staging_directory(target)
        try:
            shutil.copytree(source, staging, dirs_exist_ok=True)
            replace_directory(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    state.wait_for_everyone()
