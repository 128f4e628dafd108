"""The training config: YAML + dotted overrides, unknown keys with suggestions, range checks."""

from pathlib import Path

import pytest
import torch

from sleep_retrofit.train import load_config
from sleep_retrofit.train.config import ConfigError, apply_overrides, config_from_dict
from sleep_retrofit.train.optim import build_optimizers, cosine_schedule, split_parameters

CONFIGS = Path(__file__).resolve().parents[1] / "recipes" / "configs"


def test_every_shipped_config_loads():
    # retrofit_demo.yaml is the chain's own config (its trainer configs: test_retrofit_demo.py);
    # accelerate_*.yaml are launcher configs (accelerate launch --config_file, test_train.py)
    files = sorted(
        f
        for f in CONFIGS.glob("*.yaml")
        if f.name != "retrofit_demo.yaml" and not f.name.startswith("accelerate_")
    )
    assert len(files) >= 6
    for path in files:
        config = load_config(path)
        assert config.model.passes >= 1 and config.model.window >= 1, path


def test_overrides_are_parsed_as_yaml_and_nested(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {passes: 2}\nstage1: {max_steps: 5}\n")
    config = load_config(
        path, ["stage1.max_steps=7", "model.window=12", "data.options={steps: 3}", "cpu=true"]
    )
    assert config.stage1.max_steps == 7 and config.model.window == 12 and config.model.passes == 2
    assert config.data.options == {"steps": 3} and config.cpu is True
    # defaults of the stages survive a partial section
    assert config.stage1.finetune == "fast_weights" and config.stage2.eviction == "sliding"


@pytest.mark.parametrize(
    ("values", "named", "suggested"),
    [
        ({"modle": {"passes": 2}}, "'modle'", "'model'"),
        ({"model": {"pases": 2}}, "'model.pases'", "'model.passes'"),
        ({"stage2": {"lora": {"rank": 4}}}, "'stage2.lora.rank'", None),
        ({"stage1": {"muon_lrr": 0.1}}, "'stage1.muon_lrr'", "'stage1.muon_lr'"),
    ],
)
def test_unknown_keys_are_named_with_the_closest_suggestion(values, named, suggested):
    with pytest.raises(ConfigError) as info:
        config_from_dict(values)
    message = str(info.value)
    assert named in message
    if suggested:
        assert f"did you mean {suggested}" in message


def test_unknown_override_key_is_an_error():
    with pytest.raises(ConfigError, match="did you mean 'batch_size'"):
        config_from_dict(apply_overrides({}, ["batch_sise=3"]))
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["batch_size"])


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"model": {"passes": 0}}, r"model.passes \(N\) must be an integer >= 1"),
        ({"stage2": {"passes": -1}}, r"stage2.passes \(N\)"),
        ({"model": {"window": 0}}, r"model.window \(L\) must be an integer >= 1"),
        ({"model": {"window": "24"}}, r"model.window \(L\)"),
        ({"data": {"path": "/no/such/file.jsonl", "task": "gsm_infinite"}}, "data.path does not exist"),
        ({"data": {"task": "rule111"}}, "data.task must be one of"),
        ({"stages": ["stage3"]}, "stages entries must be one of"),
        ({"stages": ["stage2", "stage1"]}, "in order"),
        ({"stage1": {"finetune": "full"}}, "stage1.finetune must be 'fast_weights'"),
        ({"stage1": {"eviction": "sliding"}}, "stage1.eviction must be 'hard'"),
        ({"mixed_precision": "fp16"}, "mixed_precision must be one of"),
        ({"mixed_precision": True}, "unquoted yes/no/on/off/true/false as a boolean: quote"),
        ({"stage1": {"min_lr_ratio": 2}}, "min_lr_ratio"),
        ({"model": {"num_layers": 3}}, "even"),
        ({"data": {"mixture": [{"steps": 0}, {"steps": 2}]}}, "without telling the model which t"),
        (
            {"data": {"mixture": [{"steps": 0}, {"steps": 2, "announce_steps": True}]}},
            "announce_steps: true",
        ),
    ],
)
def test_bad_values_raise_config_errors(values, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict(values)


def test_an_announced_t_mixture_is_accepted():
    config = config_from_dict(
        {"data": {"options": {"announce_steps": True}, "mixture": [{"steps": 0}, {"steps": 2}]}}
    )
    assert config.data.options["announce_steps"] is True
    # One t per run needs no announcement.
    config_from_dict({"data": {"mixture": [{"steps": 2, "width": 8}, {"steps": 2, "width": 16}]}})


def test_unquoted_mixed_precision_no_is_accepted(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("mixed_precision: no\n")  # YAML 1.1: the boolean false
    assert load_config(path).mixed_precision == "no"
    assert load_config(None, ["mixed_precision=no"]).mixed_precision == "no"


def test_missing_config_file():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("/no/such/config.yaml")


def test_muon_takes_hidden_matrices_and_adamw_the_rest():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 8), torch.nn.Linear(8, 8), torch.nn.LayerNorm(8))
    model[1].bias.requires_grad_(False)
    groups = split_parameters(model)
    assert [p.shape for p in groups.muon] == [torch.Size([8, 8])]
    assert {tuple(p.shape) for p in groups.adamw} == {(10, 8), (8,)}  # embedding + norm weight/bias
    muon, adamw = build_optimizers(model, optimizer="muon", muon_lr=1e-2, adamw_lr=1e-3)
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    (only,) = build_optimizers(model, optimizer="adamw", adamw_lr=1e-3)
    assert isinstance(only, torch.optim.AdamW)
    for param in model.parameters():
        param.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizers(model)


def test_cosine_schedule_warms_up_then_decays_to_its_floor():
    """transformers' schedule (0 -> base over the warm-up, half cosine to min_lr_ratio), per optimiser."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    schedule = cosine_schedule(optimizer, total_steps=10, warmup_steps=2, min_lr_ratio=0.1)
    rates = []
    for _ in range(11):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates[:3] == pytest.approx([0.0, 1.0, 2.0])
    assert rates[10] == pytest.approx(0.2)
    assert rates[6] == pytest.approx(0.2 + 1.8 * 0.5)  # half-way through the cosine
    assert all(a >= b for a, b in zip(rates[2:], rates[3:], strict=False))
    with pytest.raises(ValueError, match="total_steps must be >= 1"):
        cosine_schedule(optimizer, total_steps=0)
