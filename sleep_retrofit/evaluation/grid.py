"""Running the grid: load the model once, score every missing cell, keep results.json current
(written atomically after each cell, so an interrupted run resumes where it stopped)."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..modeling import free_running_targets
from ..sleep.settings import SleepSettings
from ..tasks.collate import SleepCollator
from ..tasks.gsm_infinite.scoring import score_gsm_infinite
from ..tasks.reading import read_batch
from .groups import prepare_grid
from .report import markdown_report, plot_results
from .spec import (
    _DTYPES,
    DIFFICULTY_NAMES,
    RESULTS_JSON,
    RESULTS_MARKDOWN,
    RESULTS_PLOT,
    EvalInputError,
    EvalSpec,
    GridResult,
    _Cell,
    _DataGroup,
    _fail,
    _Grid,
    _pad_id,
    _record_key,
)

__all__ = ["load_model", "evaluate_cell", "run_grid"]


def load_model(model_dir: Path, device: str | None = None, dtype: str | None = None) -> torch.nn.Module:
    """Load a converted checkpoint for evaluation (eval mode, on `device`)."""
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": _DTYPES[dtype]} if dtype is not None else {}
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), **kwargs)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval()


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _batches(rows: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def _collated_batches(
    model: torch.nn.Module,
    rows: Sequence[dict[str, Any]],
    ids: Mapping[str, int],
    pad_id: int,
    settings: SleepSettings,
    batch_size: int,
) -> Iterator[tuple[Sequence[dict[str, Any]], dict[str, torch.Tensor]]]:
    """The synthetic-task rows in batches laid out by SleepCollator, on the model's device."""
    collator = SleepCollator(settings.window, pad_id)
    device = _model_device(model)
    for batch_rows in _batches(rows, batch_size):
        features = [
            {
                "input_ids": [ids[token] for token in row["tokens"]],
                "loss_mask": row["loss_mask"],
                "target_start": row["target_start"],
            }
            for row in batch_rows
        ]
        batch = collator(features)
        yield batch_rows, {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "labels")}


def _evaluate_synthetic(
    model: torch.nn.Module, group: _DataGroup, settings: SleepSettings, passes: int, spec: EvalSpec, bar: Any
) -> dict[str, Any]:
    """Rule 110 or Depo: every answer decoded free running (from the model's own earlier answers:
    gold ones fed back would leak t, or facts about the same graph) and read and scored by the
    task's reader (tasks/reading.py), exactly as the trainer's periodic evaluation does."""
    reader, ids, pad = group.task_object
    rows = group.examples()
    predictions: list[Any] = []
    losses: list[float] = []
    consolidation = {"chunks": 0, "passes": 0}
    for batch_rows, batch in _collated_batches(model, rows, ids, pad, settings, spec.batch_size):
        predicted, teacher_forced = free_running_targets(
            model,
            batch["input_ids"],
            batch["labels"],
            reader.candidates,
            attention_mask=batch["attention_mask"],
            consolidation=consolidation,
            passes=passes,
            window=settings.window,
            eviction=settings.eviction,
            tolerance=settings.tolerance,
        )
        answers, batch_losses, _ = read_batch(reader, batch_rows, predicted, teacher_forced)
        predictions += answers
        losses += batch_losses
        if bar is not None:
            bar.update(len(batch_rows))
    record = {**reader.score(predictions, rows), "loss": sum(losses) / len(losses), "num_examples": len(rows)}
    if consolidation["chunks"]:
        record["mean_passes"] = consolidation["passes"] / consolidation["chunks"]
    if spec.save_outputs:
        record["outputs"] = predictions
    return record


def _evaluate_gsm(
    model: torch.nn.Module,
    group: _DataGroup,
    settings: SleepSettings,
    passes: int,
    spec: EvalSpec,
    bar: Any,
    tokenizer: Any,
) -> dict[str, Any]:
    rows = group.examples()
    pad_id = _pad_id(tokenizer)
    collator = SleepCollator(settings.window, pad_id)
    device = _model_device(model)
    outputs: list[str] = []
    for batch_rows in _batches(rows, spec.batch_size):
        batch = collator(
            [
                {"input_ids": r["input_ids"], "loss_mask": r["loss_mask"], "target_start": r["target_start"]}
                for r in batch_rows
            ]
        )
        input_ids = batch["input_ids"].to(device)
        generated = model.generate(
            input_ids=input_ids,
            attention_mask=batch["attention_mask"].to(device),
            max_new_tokens=spec.max_new_tokens,
            do_sample=False,
            pad_token_id=pad_id,
            eos_token_id=tokenizer.eos_token_id,
            passes=passes,
            window=settings.window,
            eviction=settings.eviction,
            tolerance=settings.tolerance,
        )
        texts = tokenizer.batch_decode(generated[:, input_ids.shape[1] :], skip_special_tokens=True)
        # The prompt ends with the cue "Answer:"; the scorer looks for it in the output.
        outputs.extend("Answer:" + text for text in texts)
        if bar is not None:
            bar.update(len(batch_rows))
    scores = score_gsm_infinite(outputs, rows)
    record = {
        "accuracy": scores["accuracy"],
        "num_examples": scores["count"],
        "subset": "symbolic" if rows[0].get("answer_list") is not None else _realistic_subset(rows),
    }
    if spec.save_outputs:
        record["outputs"] = outputs
    return record


def _realistic_subset(rows: Sequence[Mapping[str, Any]]) -> str:
    """medium / hard from the rows' `d` field (2 / 3), else "realistic"."""
    depth = rows[0].get("d")
    return {2: "medium", 3: "hard"}.get(depth, "realistic")


def evaluate_cell(model: torch.nn.Module, cell: _Cell, grid: _Grid, bar: Any = None) -> dict[str, Any]:
    """Score one grid cell; returns its record (without the identity fields)."""
    settings = grid.settings
    with torch.no_grad():
        if cell.task in ("rule110", "depo"):
            return _evaluate_synthetic(model, cell.group, settings, cell.passes, grid.spec, bar)
        return _evaluate_gsm(model, cell.group, settings, cell.passes, grid.spec, bar, grid.tokenizer)


def _read_results(path: Path, model_dir: Path) -> dict[str, Any]:
    model = str(model_dir.resolve())
    if not path.exists():
        return {"model": model, "records": []}
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise EvalInputError(
            f"{path} is not valid JSON ({err}); move it away or choose another out"
        ) from None
    if not isinstance(results, dict) or not isinstance(results.get("records"), list):
        _fail(f"{path} is not an evaluation results file (no 'records' list)")
    if results.get("model") != model:
        _fail(
            f"{path} holds results of {results.get('model')!r}, not of {model!r}; "
            "choose another out directory"
        )
    return results


def _write_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` so that readers (and an interrupted run) see the old or the new
    file, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _stored_key(record: Mapping[str, Any]) -> str | None:
    try:
        return _record_key(record["task"], record["difficulty"], record["passes"], record["setting"])
    except (KeyError, TypeError):
        return None


def run_grid(spec: EvalSpec) -> GridResult:
    """Evaluate every cell of the grid not yet in ``out/results.json``; write the JSON after
    each cell, then the markdown table and the plot. Input errors raise EvalInputError before
    the model is loaded; the model is not loaded at all when every cell is already done."""
    grid = prepare_grid(spec)
    json_path = grid.out_dir / RESULTS_JSON
    results = _read_results(json_path, grid.model_dir)
    stored = {_stored_key(r): r for r in results["records"]}
    pending = [cell for cell in grid.cells if cell.key() not in stored]

    # Data before the model: loading Hub files can still reveal bad input (fields, op counts).
    for group in {id(cell.group): cell.group for cell in pending}.values():
        try:
            rows = group.examples()
        except (ValueError, FileNotFoundError) as err:
            raise EvalInputError(str(err)) from None
        if not rows:
            _fail(f"{group.task} {DIFFICULTY_NAMES[group.task]}={group.difficulty}: no examples")

    if pending:
        model = load_model(grid.model_dir, spec.device, spec.dtype)
        bar = None
        if spec.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=sum(len(cell.group.examples()) for cell in pending), unit="ex", desc="eval")
        try:
            for cell in pending:
                if bar is not None:
                    bar.set_description(
                        f"{cell.task} {DIFFICULTY_NAMES[cell.task]}={cell.difficulty} N={cell.passes}"
                    )
                began = time.perf_counter()
                scores = evaluate_cell(model, cell, grid, bar)
                record = {
                    "task": cell.task,
                    "difficulty_name": DIFFICULTY_NAMES[cell.task],
                    "difficulty": cell.difficulty,
                    "passes": cell.passes,
                    **scores,
                    "seconds": time.perf_counter() - began,
                    "setting": cell.setting,
                }
                results["records"].append(record)
                stored[cell.key()] = record
                _write_atomically(json_path, json.dumps(results, indent=1, default=str) + "\n")
        finally:
            if bar is not None:
                bar.close()
    elif not json_path.exists():
        _write_atomically(json_path, json.dumps(results, indent=1) + "\n")

    records = [stored[cell.key()] for cell in grid.cells]
    markdown_path = grid.out_dir / RESULTS_MARKDOWN
    _write_atomically(markdown_path, markdown_report(records, title=f"Evaluation of {grid.model_dir}") + "\n")
    plot_path = plot_results(records, grid.out_dir / RESULTS_PLOT)
    return GridResult(records, json_path, markdown_path, plot_path, evaluated=len(pending))
