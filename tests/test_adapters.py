"""Adapter-only checkpoints (sleep_retrofit/adapters.py): only the added blocks and the sleep config,
in the base's dtype, with a reference to the base checked by the hash of its weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

import sleep_retrofit  # noqa: F401  (registers the converted model type)
from sleep_retrofit.adapters import ADAPTER_WEIGHTS, BaseMismatchError
from sleep_retrofit.convert import ConvertError, convert
from sleep_retrofit.converted import describe
from sleep_retrofit.presets import load_preset


@pytest.fixture(scope="module")
def bf16_base(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("adapters") / "base"
    model, tokenizer = load_preset("tiny-llama")
    model.to(torch.bfloat16).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _convert(base: Path, out: Path, **options) -> Path:
    torch.manual_seed(0)  # the same block initialisation for the full and the adapter-only copy
    return convert(base, out, window=8, passes=2, progress=False, **options)


def test_adapter_only_loads_to_the_full_checkpoints_model(bf16_base, tmp_path):
    full = _convert(bf16_base, tmp_path / "full", dtype="auto")
    adapter = _convert(bf16_base, tmp_path / "adapter", adapter_only=True)
    assert not (adapter / "model.safetensors").exists()
    with safe_open(str(adapter / ADAPTER_WEIGHTS), "pt") as weights:
        names = list(weights.keys())
        assert names and all(name.startswith("fast_weights.") for name in names)
        assert {weights.get_tensor(name).dtype for name in names} == {torch.bfloat16}  # the base's dtype
    assert (adapter / ADAPTER_WEIGHTS).stat().st_size < (full / "model.safetensors").stat().st_size / 4
    reference = json.loads((adapter / "config.json").read_text())["base_reference"]
    assert reference["source"] == str(bf16_base.resolve()) and len(reference["sha256"]) == 64
    assert describe(adapter)["base_reference"] == reference

    loaded, expected = (AutoModelForCausalLM.from_pretrained(d).eval() for d in (adapter, full))
    assert loaded.dtype == torch.bfloat16
    for name, tensor in expected.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    ids = torch.randint(3, 90, (2, 30))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, expected(ids).logits)
    assert AutoModelForCausalLM.from_pretrained(adapter, passes=4).config.passes == 4


def test_a_modified_or_missing_base_is_refused(bf16_base, tmp_path):
    import shutil

    base = tmp_path / "base"
    shutil.copytree(bf16_base, base)
    adapter = _convert(base, tmp_path / "adapter", adapter_only=True)
    model = AutoModelForCausalLM.from_pretrained(base)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] += 1  # a fine-tuned copy under the same path
    model.save_pretrained(base)
    with pytest.raises(BaseMismatchError, match="is not the one this adapter was made for"):
        AutoModelForCausalLM.from_pretrained(adapter)
    shutil.rmtree(base)
    with pytest.raises(BaseMismatchError, match="does not exist"):
        AutoModelForCausalLM.from_pretrained(adapter)


def test_adapter_only_keeps_the_base_dtype(bf16_base, tmp_path):
    with pytest.raises(ConvertError, match="keeps the base model's own dtype"):
        convert(bf16_base, tmp_path / "out", adapter_only=True, dtype="float32", progress=False)
    assert not (tmp_path / "out").exists()


def test_a_preset_base_round_trips(tmp_path):
    adapter = _convert("tiny-llama", tmp_path / "adapter", adapter_only=True)
    full = _convert("tiny-llama", tmp_path / "full")
    ids = torch.randint(3, 90, (1, 20))
    with torch.no_grad():
        a = AutoModelForCausalLM.from_pretrained(adapter).eval()(ids).logits
        b = AutoModelForCausalLM.from_pretrained(full).eval()(ids).logits
    assert torch.equal(a, b)


def _adapter_run(tmp_path: Path, base: Path, stages: list[str], stage1_steps: int) -> dict:
    """A trainer config of a few steps on tiny Rule 110 that publishes an adapter of `base`."""
    return {
        "output_dir": str(tmp_path / "run"),
        "stages": stages,
        "save_adapter": True,
        "batch_size": 4,
        "progress": False,
        "model": {"source": str(base), "window": 8, "passes": 2},
        "data": {"task": "rule110", "train_examples": 16, "eval_examples": 4,
                 "options": {"width": 6, "num_strings": 2, "steps": 1}},
        "stage1": {"max_steps": stage1_steps, "optimizer": "adamw", "adamw_lr": 1e-2},
    }  # fmt: skip


def test_the_trainer_publishes_an_adapter_of_what_it_trained(bf16_base, tmp_path):
    """save_adapter: true writes {output_dir}/adapter beside the full model; it refers to the
    bf16 base as stored (trained in float32, the base untouched) and loads to the same model."""
    from sleep_retrofit.tasks import task_tokenizer
    from sleep_retrofit.train import ConfigError, train
    from sleep_retrofit.train.config import config_from_dict

    values = _adapter_run(tmp_path, bf16_base, ["stage1"], stage1_steps=3)
    assert task_tokenizer("rule110", width=6, num_strings=2).vocab_size <= 100
    train(config_from_dict(values))
    adapter, full = tmp_path / "run" / "adapter", tmp_path / "run" / "model"
    reference = json.loads((adapter / "config.json").read_text())["base_reference"]
    assert reference["source"] == str(bf16_base.resolve())
    loaded = AutoModelForCausalLM.from_pretrained(adapter).eval()
    expected = AutoModelForCausalLM.from_pretrained(full, dtype=torch.bfloat16).eval()
    assert loaded.dtype == torch.bfloat16
    ids = torch.randint(3, 20, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, expected(ids).logits)

    values["stages"], values["stage2"] = ["stage1", "stage2"], {"finetune": "full"}
    with pytest.raises(
        ConfigError, match="save_adapter keeps the base untouched, but stage2.finetune='full'"
    ):
        config_from_dict(values)


def test_the_trainer_publishes_lora_adapters_with_the_blocks(bf16_base, tmp_path):
    """Stage 2 with LoRA: the adapter ships the blocks and the unmerged LoRA weights (lora/) and
    loads, merged in the base's dtype, to the trained model; it is a small share of the full one."""
    from sleep_retrofit.train import train
    from sleep_retrofit.train.config import config_from_dict

    values = _adapter_run(tmp_path, bf16_base, ["stage1", "stage2"], stage1_steps=2)
    values["stage2"] = {"max_steps": 3, "finetune": "lora", "optimizer": "adamw", "adamw_lr": 1e-2,
                        "lora": {"r": 2, "target_modules": ["q_proj", "v_proj"]}}  # fmt: skip
    train(config_from_dict(values))
    adapter, full = tmp_path / "run" / "adapter", tmp_path / "run" / "model"
    lora = safetensors.torch.load_file(str(adapter / "lora" / "adapter_model.safetensors"))
    lora_b = [t for name, t in lora.items() if "lora_B" in name]
    assert lora_b and all(t.abs().max() > 0 for t in lora_b)  # trained, not the zero init
    assert not any("fast_weights" in name and "lora_" in name for name in lora)

    loaded = AutoModelForCausalLM.from_pretrained(adapter).eval()
    expected = AutoModelForCausalLM.from_pretrained(full, dtype=torch.bfloat16).eval()
    stored = AutoModelForCausalLM.from_pretrained(bf16_base, dtype="auto")
    q_proj = "base.model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(loaded.state_dict()[q_proj], stored.state_dict()[q_proj.removeprefix("base.")])
    ids = torch.randint(3, 20, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, expected(ids).logits, rtol=2e-2, atol=2e-2)
    size = sum(f.stat().st_size for f in adapter.rglob("*.safetensors"))
    assert size < 0.5 * sum(f.stat().st_size for f in full.glob("*.safetensors"))
