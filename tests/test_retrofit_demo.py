"""The retrofit chain (recipes/retrofit_demo.py) at tiny sizes: a pretrained Llama checkpoint
converts, stage 1 changes only the inserted blocks, stage 2 the base too, every arm evaluates."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.usefixtures("one_thread")

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "retrofit_demo.py"
CONFIG = RECIPE.parent / "configs" / "retrofit_demo.yaml"


@pytest.fixture(scope="module")
def demo():
    spec = importlib.util.spec_from_file_location("retrofit_demo", RECIPE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


TINY = [
    "seeds=[0]",
    "jobs=1",
    "task.options={width: 6, num_strings: 3, announce_steps: true}",
    "task.train_t=[0, 1]",
    "task.eval_t=[0, 1]",
    "base.hidden_size=32",
    "base.intermediate_size=64",
    "base.steps=4",
    "base.batch_size=8",
    "convert.window=7",
    "passes=[2]",
    "arms=[two_stage, lora]",
    "train.batch_size=8",
    "train.eval_batch_size=8",
    "train.stage1.max_steps=3",
    "train.stage2.max_steps=3",
    "eval.examples=4",
    "eval.batch_size=4",
]


def _changed(after: dict[str, torch.Tensor], before: dict[str, torch.Tensor]) -> set[str]:
    assert set(after) <= set(before)
    return {name for name, tensor in after.items() if not torch.equal(tensor, before[name])}


def test_the_chain_connects(demo, tmp_path):
    from transformers import AutoModelForCausalLM

    import sleep_retrofit  # noqa: F401  (registers the converted model type)

    assert demo.main(["--config", str(CONFIG), f"output_dir={tmp_path}", *TINY]) == 0
    seed = tmp_path / "seed0"

    # 1. The pretrained base is an ordinary transformers checkpoint with its tokenizer.
    base = AutoModelForCausalLM.from_pretrained(seed / "base")
    assert type(base).__name__ == "LlamaForCausalLM"
    assert (seed / "base" / "tokenizer.json").is_file()

    # 2. Its conversion is the base exactly when the window covers the input.
    converted = AutoModelForCausalLM.from_pretrained(seed / "converted", window=64, eviction="sliding")
    assert type(converted).__name__ == "SleepRetrofitForCausalLM"
    ids = torch.randint(3, base.config.vocab_size, (2, 27))
    with torch.no_grad():
        torch.testing.assert_close(converted(ids).logits, base(ids).logits, rtol=1e-5, atol=1e-5)

    # 3. Stage 1 trains only the inserted blocks; stage 2 (full) trains the base too.
    start = load_file(str(seed / "converted" / "model.safetensors"))
    stages = seed / "two_stage_N2" / "train"
    stage1 = _changed(load_file(str(stages / "stage1" / "model" / "model.safetensors")), start)
    assert stage1 and all(name.startswith("fast_weights.") for name in stage1), sorted(stage1)
    stage2 = _changed(load_file(str(stages / "stage2" / "model" / "model.safetensors")), start)
    assert any(not name.startswith("fast_weights.") for name in stage2)

    # 4. Every arm evaluated at every t; LoRA trains fewer parameters than full fine-tuning.
    results = json.loads((tmp_path / "results.json").read_text())
    cells = {(row["label"], row["t"]) for row in results["summary"]}
    labels = ["base (full attention)", "base (window L)", "two-stage N=2", "two-stage LoRA N=2"]
    assert cells == {(label, t) for label in labels for t in (0, 1)}
    for row in results["summary"]:
        assert 0.0 <= row["mean"] <= 1.0 and len(row["per_string"]) == 3
    counts = {job["name"]: job["trainable_parameters"] for job in results["jobs"]}
    full, lora = counts["seed0/two_stage_N2"], counts["seed0/lora_N2"]
    assert full["stage1"] < lora["stage2"] < full["stage2"]
    assert "stage1" not in lora  # LoRA's stage 2 starts from the two-stage arm's stage-1 model
    assert "| two-stage LoRA N=2 |" in (tmp_path / "results.md").read_text()

    # per_seed.json keeps what the means hide: per-string accuracy per t and every loss curve.
    detail = json.loads((tmp_path / "per_seed.json").read_text())
    assert set(detail) == set(counts) | {"seed0/base_pretrain_loss"}
    assert [r["difficulty"] for r in detail["seed0/two_stage_N2"]["records"]] == [0, 1]
    assert all(len(r["per_label_accuracy"]) == 3 for job in counts for r in detail[job]["records"])
    assert {"stage1_loss", "stage2_loss"} <= set(detail["seed0/two_stage_N2"])
    assert "stage1_loss" not in detail["seed0/lora_N2"] and detail["seed0/lora_N2"]["stage2_loss"]
    assert detail["seed0/base_pretrain_loss"][-1][0] == 4  # base.steps in TINY

    # --report-only rewrites the report from the finished jobs without running anything.
    (tmp_path / "results.md").unlink()
    assert demo.main(["--config", str(CONFIG), f"output_dir={tmp_path}", *TINY, "--report-only"]) == 0
    assert "report of the finished jobs" in (tmp_path / "results.md").read_text()

    # A rerun finds every job done and trains nothing.
    before = (seed / "two_stage_N2" / "summary.json").stat().st_mtime_ns
    assert demo.main(["--config", str(CONFIG), f"output_dir={tmp_path}", *TINY]) == 0
    assert (seed / "two_stage_N2" / "summary.json").stat().st_mtime_ns == before


def test_bad_overrides_are_one_line_and_exit_2(demo, tmp_path, capsys):
    assert demo.main(["--config", str(CONFIG), "base.hidden=32"]) == 2
    assert "unknown key 'hidden'" in capsys.readouterr().err
    assert demo.main(["--config", str(CONFIG), "arms=[two_stage, distil]"]) == 2
    assert "arms ['distil'] are unknown" in capsys.readouterr().err
    assert demo.main(["--config", str(CONFIG), "passes=[0]"]) == 2
    assert "passes must be a list of ints >= 1" in capsys.readouterr().err
    partial = tmp_path / "partial.yaml"
    partial.write_text("output_dir: x\nseeds: [0]\n")
    assert demo.main(["--config", str(partial)]) == 2
    assert "lacks ['jobs', 'task'" in capsys.readouterr().err


def test_the_shipped_config_plans_valid_trainer_configs(demo, tmp_path):
    from sleep_retrofit.train.config import config_from_dict

    config = demo.load_demo_config(CONFIG, [f"output_dir={tmp_path}"])
    jobs = demo.plan_jobs(config, tmp_path)
    trained = [job for job in jobs if job["train"] is not None]
    # per seed: N = 1, 2, 4 two-stage, stage 2 alone and LoRA at N = 4; plus two base arms
    assert len(jobs) == len(config["seeds"]) * 7 and len(trained) == len(config["seeds"]) * 5
    for job in trained:
        train = config_from_dict(job["train"])
        assert train.model.passes == job["passes"] and train.model.window == config["convert"]["window"]
        assert train.stage1.finetune == "fast_weights" and train.stage1.eviction == "hard"
        assert train.stage2.eviction == "sliding"
    assert {job["train"]["stage2"]["finetune"] for job in trained} == {"full", "lora"}
    for lora in (job for job in trained if job["train"]["stage2"]["finetune"] == "lora"):
        assert lora["train"]["stages"] == ["stage2"]
        assert lora["train"]["model"]["source"].endswith("two_stage_N4/train/stage1/model")
    assert demo.main(["--config", str(CONFIG), "arms=[lora]"]) == 2
    # the full-attention arm's window reaches over a whole test input
    full = next(job for job in jobs if job["label"] == "base (full attention)")
    assert full["window"] >= 4 * 17 + 1 + 4
