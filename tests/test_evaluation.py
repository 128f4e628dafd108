"""The evaluation grid end to end on tiny random converted models (sleep_retrofit/evaluation/)."""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

import sleep_retrofit.evaluation as evaluation
from sleep_retrofit.evaluation import EvalInputError, EvalSpec, add_eval_arguments, run_eval, run_grid
from sleep_retrofit.modeling import SleepRetrofitForCausalLM
from sleep_retrofit.presets import preset_tokenizer
from sleep_retrofit.sleep import SleepSettings
from sleep_retrofit.tasks import (
    DepoConfig,
    DepoTask,
    Rule110Task,
    build_dataset,
    build_word_tokenizer,
    task_tokenizer,
)
from sleep_retrofit.tasks.gsm_infinite import generate_gsm_infinite, sleep_texts
from sleep_retrofit.tasks.gsm_infinite.task import GSMInfiniteConfig, GSMInfiniteTask
from sleep_retrofit.tasks.splits import generate_split

REPO = Path(__file__).resolve().parents[1]
WINDOW = 24
DEPO_OPTIONS = {"max_nodes": 6, "num_queries": 3}  # 24 context tokens (one chunk), 18 target tokens


pytestmark = pytest.mark.usefixtures("one_thread")


def _converted_model(tokenizer, window: int, directory: Path) -> Path:
    """A tiny random Llama converted for sleep, saved with `tokenizer`. The inserted blocks'
    output projections are randomised (they start at zero) so that N changes the outputs."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=8,  # GDN blocks after layers 3 and 7; the loop span (2, 6) holds one
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = SleepRetrofitForCausalLM.from_base(
        LlamaForCausalLM(config).eval(), settings=SleepSettings(window=window)
    )
    with torch.no_grad():
        for name, parameter in model.fast_weights.named_parameters():
            if "o_proj" in name:
                parameter.normal_(0.0, 0.5)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    # Depo's symbols first: Rule 110's ids in this tokenizer differ from the task's own, so the
    # grid must map tokens through the model's tokenizer.
    tokenizer = build_word_tokenizer(DepoTask().symbols() + Rule110Task().symbols())
    return _converted_model(tokenizer, WINDOW, tmp_path_factory.mktemp("synthetic_model"))


@pytest.fixture(scope="module")
def gsm_model_dir(tmp_path_factory) -> Path:
    return _converted_model(preset_tokenizer(), 32, tmp_path_factory.mktemp("char_model"))


def _spec(model_dir: Path, out: Path, **overrides) -> EvalSpec:
    options = dict(
        model=model_dir,
        tasks=("rule110", "depo"),
        passes=(1, 2),
        steps=(1, 3),
        hops=(1, 2),
        num_examples=6,
        batch_size=4,  # a full and a partial batch per cell
        out=out,
        task_options={"depo": DEPO_OPTIONS},
        save_outputs=True,
        progress=False,
    )
    options.update(overrides)
    return EvalSpec(**options)


@pytest.fixture(scope="module")
def grid(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("grid_out")
    return run_grid(_spec(model_dir, out, progress=True)), out


def _forbid_loading(monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(evaluation.grid, "load_model", fail)


# ----------------------------------------------------------------------------- end to end
def test_grid_writes_complete_records_table_and_plot(grid, model_dir):
    result, out = grid
    assert result.evaluated == 8
    assert result.json_path == out / "results.json"
    on_disk = json.loads(result.json_path.read_text())
    assert on_disk["model"] == str(model_dir.resolve())
    assert on_disk["records"] == json.loads(json.dumps(result.records))
    cells = {(r["task"], r["difficulty"], r["passes"]) for r in result.records}
    grid_cells = [("rule110", 1), ("rule110", 3), ("depo", 1), ("depo", 2)]
    assert cells == {(task, d, n) for task, d in grid_cells for n in (1, 2)}
    for record in result.records:
        assert record["difficulty_name"] == {"rule110": "t", "depo": "k"}[record["task"]]
        assert record["num_examples"] == 6
        assert 0.0 <= record["accuracy"] <= 1.0
        assert math.isfinite(record["loss"]) and record["loss"] > 0
        assert record["seconds"] >= 0
        assert record["setting"]["window"] == WINDOW and record["setting"]["eviction"] == "hard"
        assert len(record["outputs"]) == 6
        if record["task"] == "rule110":
            assert record["accuracy"] == record["exact_match"]
            assert len(record["per_label_accuracy"]) == 4
            assert all(0.0 <= a <= 1.0 for a in record["per_label_accuracy"])
            assert record["chance_exact_match"] == 0.5**4
            assert all(len(bits) == 4 and set(bits) <= {0, 1} for bits in record["outputs"])
        else:
            assert record["num_queries"] == 6 * DEPO_OPTIONS["num_queries"]
            assert record["setting"]["max_nodes"] == record["setting"]["min_nodes"] == 6

    markdown = result.markdown_path.read_text()
    assert "## rule110" in markdown and "## depo" in markdown
    assert "| t | N=1 | N=2 |" in markdown and "| k | N=1 | N=2 |" in markdown
    assert "**per-string accuracy** (string 0 = the oldest)" in markdown
    by_cell = {(r["task"], r["difficulty"], r["passes"]): r for r in result.records}
    for task, d in (("rule110", 1), ("rule110", 3), ("depo", 1), ("depo", 2)):
        row = f"| {d} | {by_cell[(task, d, 1)]['accuracy']:.3f} | {by_cell[(task, d, 2)]['accuracy']:.3f} |"
        assert row in markdown
    strings = [
        " / ".join(f"{v:.2f}" for v in by_cell[("rule110", 3, n)]["per_label_accuracy"]) for n in (1, 2)
    ]
    assert f"| 3 | {strings[0]} | {strings[1]} |" in markdown

    assert result.plot_path == out / "accuracy.png"
    assert result.plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_passes_reach_the_model(grid):
    """N is passed per call: the consolidation passes change the answers' losses."""
    result, _ = grid
    by_cell = {(r["task"], r["difficulty"], r["passes"]): r for r in result.records}
    for task, d in (("rule110", 3), ("depo", 2)):
        assert abs(by_cell[(task, d, 1)]["loss"] - by_cell[(task, d, 2)]["loss"]) > 1e-6


def test_rule110_and_depo_scores_match_a_direct_computation(grid, model_dir):
    """Recompute two cells one example at a time, without the collator, with the saved
    tokenizer and the logits of every position (the forward without labels)."""
    result, _ = grid
    by_cell = {(r["task"], r["difficulty"], r["passes"]): r for r in result.records}
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    vocab = tokenizer.get_vocab()

    rows = list(build_dataset("rule110", "test", 6, steps=3))
    predictions, losses = [], []
    for row in rows:
        gold = torch.tensor([tokenizer(row["text"])["input_ids"]])
        with torch.no_grad():
            logits = model(gold, passes=2).logits[0]
        ids = gold.clone()
        bits = []
        for j in range(4):
            position = row["target_start"] + j  # `?` predicts label 0, label j-1 predicts label j
            losses.append(torch.nn.functional.cross_entropy(logits[position], gold[0, position + 1]).item())
            # Free running: label j is read after the model's OWN labels 0..j-1 were fed back.
            with torch.no_grad():
                own = model(ids, passes=2).logits[0]
            zero, one = vocab[f"s{j}_0"], vocab[f"s{j}_1"]
            bits.append(int(own[position, one] > own[position, zero]))
            ids[0, position + 1] = one if bits[-1] else zero
        predictions.append(bits)
    record = by_cell[("rule110", 3, 2)]
    assert record["outputs"] == predictions
    exact = sum(p == row["answer"] for p, row in zip(predictions, rows, strict=True)) / len(rows)
    assert record["accuracy"] == pytest.approx(exact)
    assert record["loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-4)

    rows = list(build_dataset("depo", "test", 6, config=DepoConfig.for_test(hops=(2,), **DEPO_OPTIONS)))
    inverse = {i: token for token, i in vocab.items()}
    right = total = 0
    words_per_row = []
    for row in rows:
        ids = torch.tensor([tokenizer(row["text"])["input_ids"]])
        answer_positions = [p for p, m in enumerate(row["loss_mask"]) if m]
        tokens = []
        for p in answer_positions:  # free running: each answer token after the model's own earlier ones
            with torch.no_grad():
                predicted = int(model(ids, passes=2).logits[0, p - 1].argmax())
            tokens.append(inverse[predicted])
            ids[0, p] = predicted
        words = [" ".join(tokens[i : i + 2]) for i in range(0, len(tokens), 2)]
        words_per_row.append(words)
        right += sum(w == gold for w, gold in zip(words, row["query_targets"], strict=True))
        total += len(words)
    record = by_cell[("depo", 2, 2)]
    assert record["outputs"] == words_per_row
    assert record["accuracy"] == pytest.approx(right / total)


@pytest.mark.parametrize(("task", "difficulty"), [("rule110", 3), ("depo", 2)])
def test_the_trainers_periodic_evaluation_scores_like_the_grid(grid, model_dir, task, difficulty):
    """One reader per task (tasks/reading.py): the trainer's evaluation of the same rows reads
    the same answers and gives the same score and loss as the grid's cell."""
    from dataclasses import asdict

    from sleep_retrofit.train.config import config_from_dict
    from sleep_retrofit.train.periodic_evaluation import evaluate_model

    result, _ = grid
    record = next(
        r for r in result.records if (r["task"], r["difficulty"], r["passes"]) == (task, difficulty, 2)
    )
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if task == "rule110":
        options = {"steps": difficulty}
        rows = list(build_dataset("rule110", "test", 6, steps=difficulty))
    else:
        options = asdict(DepoConfig.for_test(hops=(difficulty,), **DEPO_OPTIONS))
        rows = list(build_dataset("depo", "test", 6, config=DepoConfig.for_test(hops=(2,), **DEPO_OPTIONS)))
    rows = [{**row, "input_ids": tokenizer(row["text"])["input_ids"]} for row in rows]
    config = config_from_dict({"data": {"task": task, "options": options}, "eval_batch_size": 4})
    window, eviction = model.config.window, model.config.eviction
    trainer_record = evaluate_model(model, config, rows, tokenizer, 2, window, eviction)
    assert trainer_record["accuracy"] == record["accuracy"]
    assert trainer_record["loss"] == pytest.approx(record["loss"], rel=1e-5)
    if task == "rule110":
        assert trainer_record["per_label_accuracy"] == record["per_label_accuracy"]


# ----------------------------------------------------------------------------- resuming
def test_finished_grid_is_not_recomputed(grid, model_dir, tmp_path, monkeypatch):
    _, out = grid
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    before = (copy / "results.json").read_bytes()
    mtime = (copy / "results.json").stat().st_mtime_ns
    _forbid_loading(monkeypatch)
    again = run_grid(_spec(model_dir, copy))
    assert again.evaluated == 0
    assert (copy / "results.json").read_bytes() == before
    assert (copy / "results.json").stat().st_mtime_ns == mtime


def test_resume_computes_only_missing_cells(grid, model_dir, tmp_path, monkeypatch):
    result, out = grid
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    results = json.loads((copy / "results.json").read_text())
    removed = [r for r in results["records"] if (r["task"], r["difficulty"], r["passes"]) == ("depo", 2, 2)]
    kept = [r for r in results["records"] if r not in removed]
    assert len(removed) == 1
    (copy / "results.json").write_text(json.dumps({**results, "records": kept}))

    calls = []
    original = evaluation.grid.evaluate_cell

    def counting(model, cell, grid_, bar=None):
        calls.append((cell.task, cell.difficulty, cell.passes))
        return original(model, cell, grid_, bar)

    monkeypatch.setattr(evaluation.grid, "evaluate_cell", counting)
    again = run_grid(_spec(model_dir, copy))
    assert calls == [("depo", 2, 2)]
    assert again.evaluated == 1
    stored = json.loads((copy / "results.json").read_text())["records"]
    assert stored[:-1] == kept  # finished cells untouched
    redone = stored[-1]
    for key in ("accuracy", "outputs", "num_queries"):
        assert redone[key] == removed[0][key]
    assert redone["loss"] == pytest.approx(removed[0]["loss"], rel=1e-6)
    assert [r["passes"] for r in again.records] == [r["passes"] for r in result.records]  # grid order


def test_other_settings_are_new_cells(grid, model_dir, tmp_path, monkeypatch):
    """A cell is identified by its settings too: another window is evaluated, not skipped."""
    _, out = grid
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    again = run_grid(_spec(model_dir, copy, tasks=("rule110",), steps=(1,), passes=(1,), window=48))
    assert again.evaluated == 1
    assert again.records[0]["setting"]["window"] == 48
    assert len(json.loads((copy / "results.json").read_text())["records"]) == 9


# ----------------------------------------------------------------------------- GSM-Infinite
class _OracleModel(torch.nn.Module):
    """Stands in for a model in `generate`: answers each prompt with `answer(prompt_text)`."""

    def __init__(self, tokenizer, answer):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.tokenizer, self.answer = tokenizer, answer
        self.passes_seen = []

    def generate(self, input_ids, attention_mask, max_new_tokens, passes, pad_token_id, **kwargs):
        self.passes_seen.append(passes)
        assert (attention_mask[:, -1] == 1).all()  # left padding: every prompt ends at the last column
        new = []
        for row, mask in zip(input_ids, attention_mask, strict=True):
            prompt = self.tokenizer.decode(row[mask.bool()], skip_special_tokens=True)
            ids = self.tokenizer(self.answer(prompt), add_special_tokens=False)["input_ids"]
            new.append((ids + [self.tokenizer.eos_token_id])[:max_new_tokens])
        width = max(len(ids) for ids in new)
        new = torch.tensor([ids + [pad_token_id] * (width - len(ids)) for ids in new])
        return torch.cat([input_ids, new], dim=1)


def _gsm_spec(model_dir: Path, out: Path, **overrides) -> EvalSpec:
    options = dict(
        tasks=("gsm_infinite",),
        subset="symbolic",
        ops=(2, 3),
        passes=(1, 2),
        context_tokens=0,
        num_examples=4,
        batch_size=3,
        max_new_tokens=40,
    )
    options.update(overrides)
    return _spec(model_dir, out, **options)


def _gold_answers(rows) -> dict[str, str]:
    """Prompt text (context + cue) -> the gold direct answer."""
    answers = {}
    for row in rows:
        context, cue, answer = sleep_texts(row)
        answers[context + cue] = answer
    return answers


def test_gsm_scores_an_oracle_as_right_and_a_constant_as_wrong(gsm_model_dir, tmp_path, monkeypatch):
    tokenizer = AutoTokenizer.from_pretrained(gsm_model_dir)
    rows = []
    for op in (2, 3):
        task = GSMInfiniteTask(GSMInfiniteConfig(subset="symbolic", ops=(op,), context_tokens=0))
        rows += generate_split(task, "test", 4)
    answers = _gold_answers(rows)

    oracle = _OracleModel(tokenizer, lambda prompt: answers[prompt])
    monkeypatch.setattr(evaluation.grid, "load_model", lambda *a, **k: oracle)
    result = run_grid(_gsm_spec(gsm_model_dir, tmp_path / "oracle"))
    assert [r["accuracy"] for r in result.records] == [1.0] * 4
    assert sorted(oracle.passes_seen) == [1, 1, 1, 1, 2, 2, 2, 2]  # 2 batches per cell
    assert all(r["subset"] == "symbolic" and r["num_examples"] == 4 for r in result.records)
    assert "leaderboard score" in result.markdown_path.read_text()

    # Realistic answers are read after the cue the prompt ends with ("Answer: 42."), so the
    # bare generated text " 42." must be scored with it.
    medium = [
        row
        for op in (2, 3)
        for row in generate_split(GSMInfiniteTask(GSMInfiniteConfig(ops=(op,), context_tokens=0)), "test", 2)
    ]
    answers_medium = _gold_answers(medium)
    monkeypatch.setattr(
        evaluation.grid, "load_model", lambda *a, **k: _OracleModel(tokenizer, lambda p: answers_medium[p])
    )
    result = run_grid(_gsm_spec(gsm_model_dir, tmp_path / "medium", subset="medium", num_examples=2))
    assert [r["accuracy"] for r in result.records] == [1.0] * 4
    assert all(r["subset"] == "medium" for r in result.records)

    constant = _OracleModel(tokenizer, lambda prompt: " none.")
    monkeypatch.setattr(evaluation.grid, "load_model", lambda *a, **k: constant)
    result = run_grid(_gsm_spec(gsm_model_dir, tmp_path / "none"))
    for record, op in zip(result.records, (2, 2, 3, 3), strict=True):
        op_rows = [row for row in rows if row["op"] == op]
        assert record["accuracy"] == sum(not row["answer_list"] for row in op_rows) / len(op_rows)


def test_gsm_loaded_from_hub_files(gsm_model_dir, tmp_path, monkeypatch):
    rows = generate_gsm_infinite("symbolic", 2, 3, seed=7)
    data = tmp_path / "data" / "ops_2.jsonl"
    data.parent.mkdir()
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    answers = _gold_answers(rows)
    tokenizer = AutoTokenizer.from_pretrained(gsm_model_dir)
    monkeypatch.setattr(evaluation.grid, "load_model", lambda *a, **k: _OracleModel(tokenizer, answers.get))
    result = run_grid(_gsm_spec(gsm_model_dir, tmp_path / "out", data=data.parent, ops=(2,), subset=None))
    assert [r["accuracy"] for r in result.records] == [1.0, 1.0]
    assert all(r["num_examples"] == 3 for r in result.records)
    assert result.records[0]["setting"]["data"] == str(data.parent.resolve())


def test_gsm_real_model_batching_does_not_change_generations(gsm_model_dir, tmp_path):
    """Left padding through the collator: the same prompts give the same greedy outputs
    batched together (different lengths, padded) and one by one."""
    spec = dict(subset="medium", ops=(2,), passes=(2,), num_examples=3, max_new_tokens=3)
    batched = run_grid(_gsm_spec(gsm_model_dir, tmp_path / "batched", batch_size=3, **spec)).records[0]
    single = run_grid(_gsm_spec(gsm_model_dir, tmp_path / "single", batch_size=1, **spec)).records[0]
    rows = generate_split(GSMInfiniteTask(GSMInfiniteConfig(subset="medium", ops=(2,))), "test", 3)
    assert len({len("".join(sleep_texts(row)[:2])) for row in rows}) > 1  # the batch really is padded
    assert batched["outputs"] == single["outputs"]
    assert all(output.startswith("Answer:") for output in batched["outputs"])
    assert 0.0 <= batched["accuracy"] <= 1.0


# ----------------------------------------------------------------------------- bad input
BAD_INPUTS = {
    "missing model dir": ("model", "missing", "model directory does not exist"),
    "dir without config": ("model", "empty", "no config.json"),
    "not converted": ("model", "plain", "not a sleep-retrofit checkpoint"),
    "tokenizer lacks the task": ("model", "rule110_only", "has no token for"),
    "unknown task": ("tasks", ("rule111",), "unknown task"),
    "N < 1": ("passes", (1, 0), r"passes \(N\) must be >= 1"),
    "no N": ("passes", (), "passes"),
    "t < 0": ("steps", (-1,), r"steps \(t\)"),
    "t too large": ("steps", (100_001,), r"steps \(t\)"),
    "k too large": ("hops", (17,), r"hops \(k\) must be in \[1, max_hops=16\]"),
    "no examples": ("num_examples", 0, "num_examples"),
    "batch of 0": ("batch_size", 0, "batch_size"),
    "window 0": ("window", 0, "window"),
    "window past the positions": (
        "window",
        100_000_000,
        r"window \(L\) 100000000 is larger than the position limit .* \(max_position_embeddings 4096\)",
    ),
    "unknown eviction": ("eviction", "soft", "eviction"),
    "option sets the axis": ("task_options", {"rule110": {"steps": 3}}, "may not set"),
    "unknown option": ("task_options", {"rule110": {"colour": 1}}, "unknown rule110 option"),
    "options of an unknown task": ("task_options", {"rule111": {}}, "unknown task"),
    "op too large": ("ops", (41,), r"op count must be an int in \[1, 40\]"),
    "symbolic op 0": ("ops", (0,), "op count", {"subset": "symbolic"}),
    "unknown subset": ("subset", "easy", "unknown GSM-Infinite subset"),
    "missing data": ("data", "nowhere", "data path does not exist"),
    "data without the fields": (
        "data",
        "wrong.jsonl",
        r"none of the expected GSM-Infinite fields.*found fields: \['answer', 'prompt'\]",
    ),
    "op not in the data": (
        "data",
        "ops_2.jsonl",
        r"op counts \[5\] are not in .*available op counts: \[2\]",
        {"ops": (2, 5)},
    ),
    "unknown question position": ("question_position", "middle", "question_position"),
    "out is a file": ("out", "a_file", "out must be a directory"),
}
_GSM_FIELDS = ("ops", "subset", "data", "question_position")


def _bad_input_files(model_dir: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 10}))
    (tmp_path / "empty").mkdir()
    rule110_only = tmp_path / "rule110_only"  # a converted model's config, Rule 110's tokenizer
    rule110_only.mkdir()
    shutil.copy(model_dir / "config.json", rule110_only / "config.json")
    shutil.copy(model_dir / "model.safetensors", rule110_only / "model.safetensors")
    task_tokenizer("rule110").save_pretrained(rule110_only)
    (tmp_path / "wrong.jsonl").write_text(json.dumps({"prompt": "x", "answer": 1}) + "\n")
    rows = generate_gsm_infinite("medium", 2, 2)
    (tmp_path / "ops_2.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "a_file").write_text("")


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_fails_before_the_model_is_loaded(case, model_dir, tmp_path, monkeypatch):
    _forbid_loading(monkeypatch)
    _bad_input_files(model_dir, tmp_path)
    name, value, message, *extra = BAD_INPUTS[case]
    if name in ("model", "data", "out"):
        value = tmp_path / value
    if name == "model" and value.name == "rule110_only":
        overrides = {"tasks": ("depo",)}
    elif name in _GSM_FIELDS:
        overrides = {"tasks": ("gsm_infinite",), "ops": (2,)}
    else:
        overrides = {}
    options = {"model": model_dir, "out": tmp_path / "out", **overrides, name: value}
    for more in extra:
        options.update(more)
    with pytest.raises(EvalInputError, match=message):
        run_grid(_spec(options.pop("model"), options.pop("out"), **options))


def test_results_of_another_model_are_refused(grid, tmp_path, monkeypatch):
    _, out = grid
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    results = json.loads((copy / "results.json").read_text())
    (copy / "results.json").write_text(json.dumps({**results, "model": "/elsewhere"}))
    _forbid_loading(monkeypatch)
    with pytest.raises(EvalInputError, match="holds results of '/elsewhere'"):
        run_grid(_spec(Path(results["model"]), copy))


# ----------------------------------------------------------------------------- plot, command line
def _parse(argv: list[str]) -> argparse.Namespace:
    return add_eval_arguments(argparse.ArgumentParser()).parse_args(argv)


def test_run_eval_resumes_and_reports(grid, model_dir, tmp_path, monkeypatch, capsys):
    _, out = grid
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    _forbid_loading(monkeypatch)
    argv = ["--model", str(model_dir), "--task", "rule110", "depo", "--passes", "1", "2", "--steps", "1", "3"]
    argv += ["--hops", "1", "2", "--num-examples", "6", "--batch-size", "4", "--out", str(copy)]
    argv += ["--task-option", "depo.max_nodes=6", "--task-option", "depo.num_queries=3", "--no-progress"]
    assert run_eval(_parse(argv)) == 0
    printed = capsys.readouterr().out
    assert "| t | N=1 | N=2 |" in printed and "0 cell(s) evaluated, 8 already in" in printed


def test_run_eval_bad_input_exits_2(model_dir, tmp_path, monkeypatch, capsys):
    _forbid_loading(monkeypatch)
    args = _parse(["--model", str(model_dir), "--passes", "0", "--out", str(tmp_path / "o")])
    assert run_eval(args) == 2
    assert "passes (N) must be >= 1, got 0" in capsys.readouterr().err


def test_entry_point_script(tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "eval" / "evaluate.py"), "--model", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "model directory does not exist" in done.stderr


def test_default_out_keeps_two_trained_models_apart(tmp_path):
    from sleep_retrofit.evaluation import default_out

    first, second = default_out(tmp_path / "run_a" / "model"), default_out(tmp_path / "run_b" / "model")
    assert first != second
    assert first == Path("eval_results") / "run_a-model"
