"""PEFT on a converted model (design.md, "Invariants" 8): LoRA on the attention/MLP projections plus
the inserted fast-weight blocks as modules_to_save; the sleep engine runs the adapted modules, and
the adapter saves (safetensors) and reloads onto a freshly converted model with identical logits.
"""

from __future__ import annotations

import pytest
import torch
from helpers import load_fixture_model, random_ids, tiny_llama_config
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import LlamaForCausalLM

import sleep_retrofit  # noqa: F401  (registers the native families and the converted model)
from sleep_retrofit.modeling import SleepRetrofitForCausalLM
from sleep_retrofit.sleep import SleepSettings

L = 8
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

pytestmark = pytest.mark.usefixtures("one_thread")


def fresh_converted(family: str) -> SleepRetrofitForCausalLM:
    """The same conversion every time: a seeded tiny Llama, or the Ouro fixture."""
    if family == "llama":
        torch.manual_seed(0)
        base = LlamaForCausalLM(tiny_llama_config(eos_token_id=None))
    else:
        base = load_fixture_model(family)
    settings = SleepSettings(passes=2, window=L)
    return SleepRetrofitForCausalLM.from_base(base.eval(), settings=settings).eval()


def lora_config() -> LoraConfig:
    return LoraConfig(r=4, lora_alpha=8, target_modules=PROJECTIONS, modules_to_save=["fast_weights"])


def perturb_trainable(model: torch.nn.Module, seed: int, only: str | None = None) -> None:
    """Stand-in for training: move the trainable parameters (those whose name contains `only`)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.requires_grad and (only is None or only in name):
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))


@pytest.mark.parametrize("family", ["llama", "ouro"])
def test_lora_and_fast_weights_adapter_round_trip(family, tmp_path):
    model = fresh_converted(family)
    ids = random_ids(2, 3 * L + 5)
    with torch.no_grad():
        before = model(ids).logits  # also memoises an engine over the un-wrapped modules

    peft_model = get_peft_model(model, lora_config())
    trainable = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    for projection in PROJECTIONS:
        assert any(f"{projection}.lora_A" in name for name in trainable), projection
    assert any(".fast_weights.modules_to_save.default." in name for name in trainable)
    assert not any("lora" not in name and "modules_to_save" not in name for name in trainable)
    with torch.no_grad():
        torch.testing.assert_close(peft_model(input_ids=ids).logits, before)  # LoRA B starts at zero

    # The engine must run PEFT's trainable copy of the fast-weight blocks, not the frozen originals.
    perturb_trainable(peft_model, seed=1, only="fast_weights")
    with torch.no_grad():
        assert (peft_model(input_ids=ids).logits - before).abs().max() > 1e-3
    perturb_trainable(peft_model, seed=2, only="lora_B")
    with torch.no_grad():
        adapted = peft_model(input_ids=ids).logits

    peft_model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_model.safetensors").is_file()
    assert (tmp_path / "adapter_config.json").is_file()

    reloaded = PeftModel.from_pretrained(fresh_converted(family), tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, adapted)
        # and per-call sleep settings still reach the engine through the PEFT wrapper
        assert torch.equal(
            reloaded(input_ids=ids, passes=3, eviction="sliding").logits,
            peft_model(input_ids=ids, passes=3, eviction="sliding").logits,
        )
        generated = reloaded.generate(input_ids=ids[:1, :13], max_new_tokens=12, do_sample=False)
        assert torch.equal(
            generated, peft_model.generate(input_ids=ids[:1, :13], max_new_tokens=12, do_sample=False)
        )


def test_adapter_trains_through_the_sleep_engine():
    """A loss on the last chunk reaches every LoRA matrix and every parameter of the fast-weight copies."""
    peft_model = get_peft_model(fresh_converted("llama"), lora_config())
    # Zero LoRA B and zero output projections would block the gradient of what lies behind them.
    perturb_trainable(peft_model, seed=3)
    ids = random_ids(2, 2 * L + 5, seed=4)
    labels = ids.clone()
    labels[:, : 2 * L] = -100
    peft_model(input_ids=ids, labels=labels).loss.backward()
    trainable = {name: p for name, p in peft_model.named_parameters() if p.requires_grad}
    assert any("fast_weights" in name for name in trainable)
    without_grad = [name for name, p in trainable.items() if p.grad is None or p.grad.abs().sum() == 0]
    assert not without_grad


def test_modules_to_save_head_is_used_and_round_trips(tmp_path):
    """PEFT may swap only the head (modules_to_save=["lm_head"]); an engine built before the swap
    must not keep running the frozen original."""
    model = fresh_converted("llama")
    ids = random_ids(1, 2 * L + 3, seed=5)
    with torch.no_grad():
        before = model(ids).logits
    config = LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"])
    peft_model = get_peft_model(model, config)
    perturb_trainable(peft_model, seed=6, only="lm_head")
    with torch.no_grad():
        adapted = peft_model(input_ids=ids).logits
    assert (adapted - before).abs().max() > 1e-3
    peft_model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(fresh_converted("llama"), tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, adapted)


def test_lora_exclude_modules_keep_adapters_off_the_fast_weight_mixers():
    """PEFT matches short names everywhere: target_modules=["q_proj", "v_proj"] also adapts the
    inserted GatedDeltaNet's q_proj / v_proj. exclude_modules=lora_exclude_modules() keeps the
    adapters on the base's projections only."""
    model = fresh_converted("llama")
    naive = get_peft_model(fresh_converted("llama"), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert any("fast_weights" in n and "lora_A" in n for n, _ in naive.named_parameters())

    base_layers = model.config.base_config.num_hidden_layers
    peft_model = get_peft_model(
        model,
        LoraConfig(
            r=4,
            target_modules=["q_proj", "v_proj"],
            exclude_modules=model.lora_exclude_modules(),
            modules_to_save=["fast_weights"],
        ),
    )
    adapted = [n for n, _ in peft_model.named_parameters() if "lora_A" in n]
    assert len(adapted) == 2 * base_layers and not any("fast_weights" in n for n in adapted)
    assert all(".self_attn." in n for n in adapted)


@pytest.mark.parametrize("targets", [["no_such_proj"], ["b_proj"]])
def test_lora_targets_that_match_nothing_outside_the_blocks_are_a_config_error(targets):
    """b_proj exists only inside the inserted GatedDeltaNet, which LoRA leaves alone."""
    from sleep_retrofit.train.config import ConfigError
    from sleep_retrofit.train.config import LoraConfig as TrainerLora
    from sleep_retrofit.train.model_setup import prepare_trainable

    with pytest.raises(ConfigError, match=r"match no Linear layer of the base model outside the fast-weight"):
        prepare_trainable(fresh_converted("llama"), "lora", TrainerLora(target_modules=targets))
