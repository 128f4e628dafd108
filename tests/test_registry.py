"""Family registry (model_type -> family), Auto-class registration and strict checkpoint loading."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, LlamaConfig, Qwen2Config

import sleep_retrofit  # noqa: F401  (registers the Auto classes)
from sleep_retrofit.models.loading import CheckpointMismatchError, check_loading_info
from sleep_retrofit.models.ouro import OuroConfig, OuroForCausalLM, OuroModel
from sleep_retrofit.models.registry import (
    FAMILIES,
    UnsupportedModelError,
    register_auto_classes,
    resolve_family,
    supported_model_types,
)

# ------------------------------------------------------------------------------------- registry


@pytest.mark.parametrize(
    "model_type, family",
    [
        ("ouro", "ouro"),
        ("jet_nemotron", "jet_nemotron"),
        ("llama", "llama"),
        ("qwen2", "llama"),
        ("qwen3", "llama"),
        ("mistral", "llama"),
    ],
)
def test_resolve_family_from_model_type(model_type, family):
    resolved = resolve_family(model_type)
    assert resolved.name == family
    assert resolve_family({"model_type": model_type}) is resolved


def test_resolve_family_from_configs_and_models():
    assert resolve_family(Qwen2Config()).name == "llama"
    assert resolve_family(LlamaConfig()).name == "llama"
    tiny = OuroConfig(
        vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2
    )
    assert resolve_family(tiny).name == "ouro"
    assert resolve_family(OuroForCausalLM(tiny)).name == "ouro"
    ouro = resolve_family("ouro")
    assert ouro.native and ouro.config_class is OuroConfig and ouro.causal_lm_class is OuroForCausalLM
    assert not resolve_family("qwen2").native
    with pytest.raises(ValueError, match="transformers' own classes"):
        _ = resolve_family("qwen2").causal_lm_class


@pytest.mark.parametrize("bad", ["gpt2", "", None, {"no_model_type": 1}])
def test_unknown_model_type_lists_supported_families(bad):
    with pytest.raises(UnsupportedModelError) as error:
        resolve_family(bad)
    message = str(error.value)
    assert f"unsupported model_type {bad if not isinstance(bad, dict) else None!r}" in message
    for model_type in ("ouro", "jet_nemotron", "llama", "qwen2", "qwen3", "mistral"):
        assert repr(model_type) in message
    assert isinstance(error.value, ValueError)


def test_supported_model_types_and_families():
    assert supported_model_types() == ["jet_nemotron", "llama", "mistral", "ouro", "qwen2", "qwen3"]
    assert [f.name for f in FAMILIES] == ["ouro", "jet_nemotron", "llama"]


def test_auto_classes_registered_on_import():
    registered = register_auto_classes()  # idempotent
    assert "ouro" in registered
    assert type(AutoConfig.for_model("ouro")) is OuroConfig
    tiny = OuroConfig(
        vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2
    )
    assert type(AutoModelForCausalLM.from_config(tiny)) is OuroForCausalLM
    assert type(AutoModel.from_config(tiny)) is OuroModel


def test_jet_nemotron_registered_on_import():
    jet = resolve_family("jet_nemotron")
    assert "jet_nemotron" in register_auto_classes()
    assert type(AutoConfig.for_model("jet_nemotron")) is jet.config_class


def test_unknown_model_type_in_checkpoint_dir(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "not_a_model", "hidden_size": 8}))
    with pytest.raises(ValueError, match="not_a_model"):
        AutoModelForCausalLM.from_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    with pytest.raises(UnsupportedModelError, match="'not_a_model'"):
        resolve_family(config)


# ------------------------------------------------------------------------------------- strict loading


@pytest.fixture()
def ouro_copy(fixtures_dir: Path, tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A writable copy of the Ouro fixture checkpoint (config + weights)."""
    source = fixtures_dir / "ouro_tiny"
    shutil.copy(source / "config.json", tmp_path / "config.json")
    return tmp_path, load_file(source / "model.safetensors")


def write_weights(directory: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})


def test_missing_tensor_is_an_error_naming_key_and_shape(ouro_copy):
    directory, tensors = ouro_copy
    del tensors["model.layers.1.input_layernorm_2.weight"]
    del tensors["model.early_exit_gate.bias"]
    write_weights(directory, tensors)
    with pytest.raises(CheckpointMismatchError) as error:
        AutoModelForCausalLM.from_pretrained(directory)
    message = str(error.value)
    assert "missing tensor 'model.layers.1.input_layernorm_2.weight': expected shape [64]" in message
    assert "missing tensor 'model.early_exit_gate.bias': expected shape [1]" in message
    assert "2 problem(s)" in message


def test_wrong_shape_is_an_error_naming_key_and_shapes(ouro_copy):
    directory, tensors = ouro_copy
    tensors["model.layers.0.mlp.up_proj.weight"] = torch.zeros(96, 64)
    write_weights(directory, tensors)
    with pytest.raises(CheckpointMismatchError) as error:
        OuroForCausalLM.from_pretrained(directory)
    expected = "tensor 'model.layers.0.mlp.up_proj.weight' has shape [96, 64] in the checkpoint"
    assert f"{expected}, expected shape [128, 64]" in str(error.value)


def test_extra_tensors_warn_with_their_names(ouro_copy):
    directory, tensors = ouro_copy
    tensors["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(64)
    tensors["model.some_upstream_buffer"] = torch.zeros(3)
    write_weights(directory, tensors)
    with pytest.warns(UserWarning, match="2 tensor\\(s\\)") as record:
        model = AutoModelForCausalLM.from_pretrained(directory)
    message = str(record[0].message)
    assert "model.layers.0.self_attn.q_proj.bias" in message and "model.some_upstream_buffer" in message
    # The known tensors still load exactly.
    assert torch.equal(model.lm_head.weight, tensors["lm_head.weight"])


def test_strict_false_keeps_transformers_behaviour(ouro_copy):
    directory, tensors = ouro_copy
    del tensors["model.norm.weight"]
    write_weights(directory, tensors)
    model, info = OuroForCausalLM.from_pretrained(directory, strict=False, output_loading_info=True)
    assert info["missing_keys"] == {"model.norm.weight"}
    assert isinstance(model, OuroForCausalLM)
    with pytest.raises(ValueError, match="ignore_mismatched_sizes=True needs strict=False"):
        OuroForCausalLM.from_pretrained(directory, ignore_mismatched_sizes=True)


def test_output_loading_info_passes_through(fixtures_dir):
    model, info = OuroForCausalLM.from_pretrained(fixtures_dir / "ouro_tiny", output_loading_info=True)
    assert isinstance(model, OuroForCausalLM)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]


def test_check_loading_info_direct():
    layer = torch.nn.Linear(3, 2)
    check_loading_info(layer, {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set()})
    with pytest.raises(CheckpointMismatchError, match="missing tensor 'weight': expected shape \\[2, 3\\]"):
        check_loading_info(layer, {"missing_keys": {"weight"}})


def test_every_registered_family_has_a_sleep_adapter() -> None:
    """A family is its registry entry plus its adapter in sleep/families.py: none may lack one."""
    from sleep_retrofit.sleep import family_adapter

    for family in FAMILIES:
        adapter = family_adapter(family.name)
        assert adapter.name == family.name
        start, end = adapter.default_loop_span(8)
        adapter.check_loop_span((start, end), 8)  # its own default passes its own check
        with pytest.raises(ValueError, match="loop_span"):
            adapter.check_loop_span((5, 2), 8)
