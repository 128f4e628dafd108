"""The two-stage trainer: what trains, that it learns, resume, corrupt checkpoints, DDP, loading."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import sleep_retrofit  # noqa: F401  (registers the Auto classes)
from sleep_retrofit.train import find_checkpoints, train, training_loss
from sleep_retrofit.train.config import ConfigError, config_from_dict
from sleep_retrofit.train.model_setup import build_model, fast_weight_parameter_names

REPO = Path(__file__).resolve().parents[1]

# Rule 110 with 2 strings of 8 bits, L = 8: two context chunks, one target chunk per example.
TINY = {
    "seed": 0,
    "batch_size": 8,
    "eval_batch_size": 32,
    "save_every": 2,
    "save_total_limit": 3,
    "log_every": 1,
    "progress": False,
    "model": {"source": "toy", "hidden_size": 32, "num_layers": 2, "num_heads": 2, "passes": 2, "window": 8},
    "data": {
        "task": "rule110",
        "train_examples": 64,
        "eval_examples": 16,
        "options": {"width": 8, "num_strings": 2, "steps": 1},
    },
    "stage1": {"max_steps": 4, "muon_lr": 0.02, "adamw_lr": 0.003},
    "stage2": {"max_steps": 4, "eviction": "sliding", "muon_lr": 0.02, "adamw_lr": 0.003},
}


def tiny(tmp_path: Path, name: str = "run", **changes) -> object:
    values = yaml.safe_load(yaml.safe_dump(TINY))  # deep copy
    for key, value in changes.items():
        node = values
        *parents, last = key.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    values["output_dir"] = str(tmp_path / name)
    return config_from_dict(values)


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def test_stage1_changes_only_fast_weight_parameters(tmp_path):
    config = tiny(tmp_path, stages=["stage1"])
    initial, _ = build_model(config)
    fast = set(fast_weight_parameter_names(initial))
    assert fast and all(name.startswith("fast_weights.") for name in fast)
    before = {k: v.clone() for k, v in initial.state_dict().items()}
    (result,) = train(config)
    after = weights(result.directory / "model")
    assert set(after) <= set(before)
    changed = {name for name, tensor in after.items() if not torch.equal(tensor, before[name])}
    assert changed, "stage 1 changed nothing"
    assert changed <= fast, f"stage 1 changed non-fast-weight parameters: {sorted(changed - fast)}"
    log = [json.loads(line) for line in (result.directory / "log.jsonl").read_text().splitlines()]
    assert (
        log[0]["event"] == "start" and log[0]["eviction"] == "hard" and log[0]["finetune"] == "fast_weights"
    )
    # The start record counts what trains: exactly the fast-weight parameters.
    named = dict(initial.named_parameters())
    assert log[0]["trainable_parameters"] == sum(named[name].numel() for name in fast)


def test_a_tiny_run_lowers_the_loss_and_the_final_model_loads_and_evaluates(tmp_path):
    from transformers import AutoModelForCausalLM

    from sleep_retrofit.evaluation import EvalSpec, run_grid

    config = tiny(tmp_path, stage1__max_steps=12, stage2__max_steps=12, save_every=100)
    results = train(config)
    assert [r.stage for r in results] == ["stage1", "stage2"]
    losses = []
    for result in results:
        log = [json.loads(line) for line in (result.directory / "log.jsonl").read_text().splitlines()]
        losses += [r["loss"] for r in log if r["event"] == "train"]
        # the logged gradient norm is the one before clipping (max_grad_norm 1.0 here)
        norms = [r["grad_norm"] for r in log if r["event"] == "train"]
        assert all(math.isfinite(n) and n > 0 for n in norms) and any(n != 1.0 for n in norms), norms
    assert len(losses) == 24
    assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:4]) / 4, losses

    final = Path(config.output_dir) / "model"
    model = AutoModelForCausalLM.from_pretrained(str(final))
    assert type(model).__name__ == "SleepRetrofitForCausalLM"
    saved = weights(final)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    # stage 2's result is the final model, and it started from stage 1's
    assert (Path(config.output_dir) / "stage2" / "model" / "model.safetensors").read_bytes() == (
        final / "model.safetensors"
    ).read_bytes()
    grid = run_grid(
        EvalSpec(
            model=final,
            tasks=("rule110",),
            passes=(1, 2),
            steps=(1,),
            num_examples=16,
            batch_size=16,
            out=tmp_path / "eval",
            task_options={"rule110": {"width": 8, "num_strings": 2}},
            progress=False,
        )
    )
    assert len(grid.records) == 2
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["loss"] > 0 for r in grid.records)


def test_gradients_reach_the_first_chunks_consolidation_passes(tmp_path):
    from sleep_retrofit.tasks import SleepCollator, build_dataset

    config = tiny(tmp_path)
    model, _ = build_model(config)
    rows = list(build_dataset("rule110", "train", 2, **config.data.options))
    batch = SleepCollator(8, 0)([{k: r[k] for k in ("input_ids", "loss_mask", "target_start")} for r in rows])
    assert batch["input_ids"].shape[1] == 8 + 8 + 3  # two context chunks, then the target part
    block = next(iter(model.fast_weights.values()))
    inputs = []

    # The input of the fast-weight block in each pass: it writes the state that later chunks read
    # (the last pass's output hidden states are discarded, its state is not).
    def keep(module, args, kwargs):
        hidden = args[0] if args else next(iter(kwargs.values()))
        hidden.retain_grad()
        inputs.append(hidden)

    handle = block.register_forward_pre_hook(keep, with_kwargs=True)
    loss = training_loss(model, batch, passes=3, window=8, eviction="hard")
    handle.remove()
    loss.backward()
    # chunk 0: 3 consolidation passes, chunk 1: 3, target chunk: 1 wake pass
    assert len(inputs) == 7
    for i, hidden in enumerate(inputs[:3]):
        assert hidden.grad is not None and hidden.grad.abs().sum() > 0, (
            f"pass {i} of chunk 0 gets no gradient"
        )


def _run_to_completion(config):
    (result,) = train(config)
    return weights(result.directory / "model")


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path):
    straight = _run_to_completion(tiny(tmp_path, "straight", stages=["stage1"], stage1__max_steps=6))
    config = tiny(tmp_path, "resumed", stages=["stage1"], stage1__max_steps=6)
    (partial,) = train(config, stop_after=5)  # "crash" after step 5: the last checkpoint is step 4
    assert partial.steps == 5 and not (partial.directory / "model").exists()
    assert [p.name for p in find_checkpoints(partial.directory)] == ["checkpoint_0", "checkpoint_1"]
    (resumed,) = train(config)
    assert resumed.resumed_from is not None and resumed.resumed_from.name == "checkpoint_1"
    after = weights(resumed.directory / "model")
    assert set(after) == set(straight)
    for name in straight:
        assert torch.equal(after[name], straight[name]), name


@pytest.mark.parametrize("crash_after", [8, 17])  # 8 batches an epoch: step 8 ends one, 16 the next
def test_resume_is_bit_exact_across_epoch_boundaries(tmp_path, crash_after):
    """A checkpoint taken at the last step of an epoch (8 batches of 8 of 64 examples) must
    resume into the same data order as the uninterrupted run (the epoch was advanced twice)."""
    changes = {"stages": ["stage1"], "stage1__max_steps": 18, "save_every": 4}
    straight = _run_to_completion(tiny(tmp_path, "straight", **changes))
    config = tiny(tmp_path, "resumed", **changes)
    (partial,) = train(config, stop_after=crash_after)
    assert partial.steps == crash_after
    (resumed,) = train(config)
    assert resumed.resumed_from is not None
    after = weights(resumed.directory / "model")
    for name in straight:
        assert torch.equal(after[name], straight[name]), name


def test_corrupt_latest_checkpoint_falls_back_to_the_previous(tmp_path):
    straight = _run_to_completion(tiny(tmp_path, "straight", stages=["stage1"], stage1__max_steps=6))
    config = tiny(tmp_path, "corrupt", stages=["stage1"], stage1__max_steps=6)
    (partial,) = train(config, stop_after=5)
    latest = find_checkpoints(partial.directory)[-1]
    (latest / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.warns(UserWarning, match="corrupt or incomplete.*; resuming from checkpoint_0 instead"):
        (resumed,) = train(config)
    assert resumed.resumed_from is not None and resumed.resumed_from.name == "checkpoint_0"
    after = weights(resumed.directory / "model")
    for name in straight:  # resumed from step 2 and recomputed steps 3..6: same result
        assert torch.equal(after[name], straight[name]), name


def _files(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }


def test_a_changed_config_on_resume_is_refused_and_deletes_nothing(tmp_path):
    config = tiny(tmp_path, "run", stages=["stage1"], stage1__max_steps=6, save_total_limit=1)
    (partial,) = train(config, stop_after=5)
    before = _files(partial.directory / "checkpoints")
    changed = tiny(
        tmp_path, "run", stages=["stage1"], stage1__max_steps=6, save_total_limit=1, model__hidden_size=16
    )
    with pytest.raises(
        ConfigError, match=r"another config \(model.hidden_size 32 -> 16\); nothing was deleted"
    ):
        train(changed)
    assert _files(partial.directory / "checkpoints") == before
    # what says how to log or save may change: the run resumes
    (resumed,) = train(tiny(tmp_path, "run", stages=["stage1"], stage1__max_steps=6, log_every=3))
    assert resumed.resumed_from is not None and resumed.steps == 6


def test_a_finished_stage_is_not_skipped_under_another_config(tmp_path):
    config = tiny(tmp_path, "run", stages=["stage1"], stage1__max_steps=2)
    train(config)
    moved = tiny(
        tmp_path, "run", stages=["stage1"], stage1__max_steps=2, seed=7, model__source="/nonexistent"
    )
    with pytest.raises(
        ConfigError, match=r"stage1 in .* finished under another config \(model.source 'toy' -> "
    ):
        train(moved)
    # adding stage 2 (or changing only its section) keeps stage 1 done
    (first, second) = train(
        tiny(tmp_path, "run", stages=["stage1", "stage2"], stage1__max_steps=2, stage2__max_steps=2)
    )
    assert first.skipped and not second.skipped and second.steps == 2


def test_a_diverging_run_stops_before_the_update_and_keeps_its_checkpoint(tmp_path):
    from sleep_retrofit.train import TrainingDiverged

    config = tiny(
        tmp_path, "run", stages=["stage1"], stage1__max_steps=6, stage1__adamw_lr=1e30, stage1__muon_lr=1e30
    )
    with pytest.raises(TrainingDiverged, match=r"stage1: the (loss|gradient norm) is (nan|inf) at step \d+"):
        train(config)
    out = Path(config.output_dir)
    assert not (out / "model").exists() and not (out / "stage1" / "model").exists()
    for checkpoint in find_checkpoints(out / "stage1"):
        assert all(bool(torch.isfinite(t).all()) for t in weights(checkpoint).values())
    log = (out / "stage1" / "log.jsonl").read_text()
    assert "NaN" not in log and "Infinity" not in log  # the log stays valid JSON
    with pytest.raises(ConfigError, match="adamw_lr must be a finite number >= 0, got inf"):
        tiny(tmp_path, "inf", stage1__adamw_lr=float("inf"))


def test_a_half_written_only_checkpoint_leaves_the_model_untouched(tmp_path):
    """The only checkpoint's optimizer file is cut short: nothing of it may reach the model (the
    weights were loaded before the optimiser failed); the stage starts again from step 0 and
    ends exactly as an uninterrupted run, and the warning says so."""
    changes = {"stages": ["stage1"], "stage1__max_steps": 6, "save_every": 4}
    straight = _run_to_completion(tiny(tmp_path, "straight", **changes))
    config = tiny(tmp_path, "cut", **changes)
    (partial,) = train(config, stop_after=5)
    (only,) = find_checkpoints(partial.directory)
    optimizer = only / "optimizer.bin"
    optimizer.write_bytes(optimizer.read_bytes()[: optimizer.stat().st_size // 2])
    with pytest.warns(UserWarning, match="no earlier checkpoint: the stage starts again from step 0"):
        (resumed,) = train(config)
    assert resumed.resumed_from is None
    after = weights(resumed.directory / "model")
    for name in straight:
        assert torch.equal(after[name], straight[name]), name


def test_a_killed_save_never_costs_the_last_complete_checkpoint(tmp_path, monkeypatch):
    """save_total_limit=1: the old checkpoint is deleted only once the new one is complete, so a
    crash in the middle of a save leaves the previous checkpoint, and the next run resumes from it."""
    from accelerate import Accelerator

    config = tiny(tmp_path, "run", stages=["stage1"], stage1__max_steps=6, save_total_limit=1)
    real = Accelerator.save_state
    calls = []

    def crash_on_second(self, output_dir=None, **kwargs):
        calls.append(output_dir)
        if len(calls) == 2:
            real(self, output_dir, **kwargs)  # written, but not yet renamed into place
            raise KeyboardInterrupt
        return real(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    monkeypatch.setattr(Accelerator, "save_state", real)
    stage = Path(config.output_dir) / "stage1"
    assert [p.name for p in find_checkpoints(stage)] == ["checkpoint_0"]
    assert Path(calls[1]).name == ".checkpoint_1.partial"
    (resumed,) = train(config)
    assert resumed.resumed_from.name == "checkpoint_0" and resumed.steps == 6
    assert not list((stage / "checkpoints").glob(".*"))  # the killed save's leftovers are gone


def test_checkpoints_hold_no_pickle_of_ours_and_resume_runs_none(tmp_path):
    """The loop's own state is JSON; a pickle planted in a checkpoint (Accelerate would load a
    registered object's custom_checkpoint_*.pkl with weights_only=False) is never executed."""
    import pickle

    config = tiny(tmp_path, "run", stages=["stage1"], stage1__max_steps=6)
    (partial,) = train(config, stop_after=5)
    latest = find_checkpoints(partial.directory)[-1]
    assert json.loads((latest / "trainer_state.json").read_text())["progress"]["step"] == 4
    assert not list(latest.glob("custom_checkpoint_*"))
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (Path.write_text, (marker, "ran"))

    (latest / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(Payload()))
    with pytest.warns(UserWarning, match="custom_checkpoint_0.pkl is not written by this trainer"):
        (resumed,) = train(config)
    assert resumed.resumed_from.name == "checkpoint_0" and not marker.exists()


def test_publishing_the_final_model_recovers_from_a_kill(tmp_path):
    """A kill between the two renames of a publish leaves output_dir/model missing and the old
    one aside; a kill while copying leaves a staging directory. The next run puts the old model
    back or cleans up (and says so), then publishes by rename: the model is never missing."""
    config = tiny(tmp_path, "run", stages=["stage1"], stage1__max_steps=2)
    train(config)
    out = Path(config.output_dir)
    published = _files(out / "model")
    (out / "model").rename(out / ".model.replaced-0000beef")
    (out / ".model.partial-dead").mkdir()
    with pytest.warns(UserWarning) as caught:
        train(config)  # the stage is done: only the publish runs again
    said = " | ".join(str(w.message) for w in caught)
    assert "restored" in said and ".model.partial-dead" in said
    assert sorted(p.name for p in out.iterdir()) == ["model", "stage1"]
    assert _files(out / "model") == published


def test_bad_inputs_fail_before_any_step(tmp_path):
    from transformers import AutoModelForCausalLM, LlamaConfig

    from sleep_retrofit.modeling import SleepRetrofitForCausalLM
    from sleep_retrofit.retrofit import FastWeightPlan

    # a converted model without fast-weight blocks cannot do stage 1
    base = AutoModelForCausalLM.from_config(
        LlamaConfig(
            vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2
        )
    )
    plain = SleepRetrofitForCausalLM.from_base(base, plan=FastWeightPlan("gdn", []))
    plain.save_pretrained(tmp_path / "plain")
    config = tiny(tmp_path, "nofast", model__source=str(tmp_path / "plain"))
    with pytest.raises(ConfigError, match="stage 1 trains only fast-weight blocks"):
        train(config)
    assert not (tmp_path / "nofast").exists()

    # a tokenizer larger than the model's vocabulary (Depo with 26 symbols and 80 hop tokens: 111 > 100)
    config = tiny(
        tmp_path,
        "vocab",
        model__source="tiny-llama",
        data__task="depo",
        data__options={"num_symbols": 26, "max_hops": 80, "hops": [1], "max_nodes": 4},
    )
    with pytest.raises(ConfigError, match=r"tokenizer has 111 tokens but the model's vocabulary .* is 100"):
        train(config)
    assert not (tmp_path / "vocab").exists()

    # bad task options and an unknown model source
    with pytest.raises(ConfigError, match="steps"):
        train(tiny(tmp_path, "opts", data__options={"steps": -1}))
    with pytest.raises(ConfigError, match="model.source"):
        train(tiny(tmp_path, "src", model__source="./no/such/model"))
    # a window past the model's positions (model.window=100000000 padded every row to it: OOM)
    with pytest.raises(
        ConfigError, match=r"model.window 100000000 is larger than the model's position limit"
    ):
        train(tiny(tmp_path, "huge-window", model__window=100_000_000))
    assert not (tmp_path / "huge-window" / "stage1" / "checkpoints").exists()


def test_a_hub_model_that_cannot_be_fetched_is_one_line_naming_it(tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants

    from sleep_retrofit.train.recipe_cli import main

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network, without the retries
    path = tmp_path / "hub.yaml"
    config = yaml.safe_load(yaml.safe_dump(TINY))
    config.update(output_dir=str(tmp_path / "hub"), model={"source": "no-such-owner/no-such-model"})
    path.write_text(yaml.safe_dump(config))
    assert main("rule110", ["--config", str(path)]) == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1
    assert "'no-such-owner/no-such-model' could not be loaded from the Hugging Face Hub" in message
    assert "model.source=DIR" in message
    assert not (tmp_path / "hub" / "model").exists()


def _launch_two_processes(
    config: dict, tmp_path: Path, name: str, *, fsdp: bool = False, stop_after: int | None = None
) -> subprocess.CompletedProcess:
    """The recipe in 2 processes: DDP (torchrun launcher, gloo on CPU) or FSDP2 through the shipped
    accelerate config; `stop_after` ends the run after that many steps (train(stop_after=...))."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    launcher = [sys.executable, "-m", "accelerate.commands.launch"]
    if fsdp:
        launcher += ["--config_file", str(REPO / "recipes" / "configs" / "accelerate_fsdp.yaml")]
    else:
        launcher += ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
    launcher += ["--dynamo_backend", "no"]
    if stop_after is None:
        script = [str(REPO / "recipes" / "rule110.py"), "--config", str(path)]
    else:
        runner = tmp_path / "stop_after.py"
        runner.write_text(
            "import sys\nfrom sleep_retrofit.train import train\n"
            "from sleep_retrofit.train.config import load_config\n"
            "train(load_config(sys.argv[1], []), stop_after=int(sys.argv[2]))\n"
        )
        script = [str(runner), str(path), str(stop_after)]
    return subprocess.run(
        launcher + script, capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path
    )


def test_fsdp2_training_equals_ddp_and_resumes_exactly(tmp_path):
    """Sharded training through Accelerate's FSDP2 (recipes/configs/accelerate_fsdp.yaml) with the
    N-pass loop reusing the body's parameters: loss, gradient norm and final parameters equal the
    DDP run's, and a run stopped after its checkpoint and relaunched ends the same."""
    config = yaml.safe_load(yaml.safe_dump(TINY))
    config.update(stages=["stage2"], save_every=2)
    config["stage2"].update(max_steps=4, finetune="full", optimizer="adamw")
    config["data"]["eval_examples"] = 4
    runs = {}
    for name, fsdp in (("ddp", False), ("fsdp", True)):
        runs[name] = {**config, "output_dir": str(tmp_path / name)}
        done = _launch_two_processes(runs[name], tmp_path, name, fsdp=fsdp, stop_after=2 if fsdp else None)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert not (tmp_path / "fsdp" / "model").exists()  # stopped after step 2, its checkpoint written
    done = _launch_two_processes(runs["fsdp"], tmp_path, "fsdp", fsdp=True)  # resume
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    def steps(name: str) -> list[dict]:
        log = (tmp_path / name / "stage2" / "log.jsonl").read_text().splitlines()
        return [json.loads(line) for line in log if '"train"' in line]

    starts = [json.loads(x) for x in (tmp_path / "fsdp" / "stage2" / "log.jsonl").read_text().splitlines()]
    assert [s["step"] for s in starts if s["event"] == "start"] == [0, 2]  # resumed at step 2
    assert all(s["processes"] == 2 for s in starts if s["event"] == "start")
    for ddp, fsdp in zip(steps("ddp"), steps("fsdp"), strict=True):
        assert ddp["step"] == fsdp["step"]
        assert fsdp["loss"] == pytest.approx(ddp["loss"], abs=1e-6)
        assert fsdp["grad_norm"] == pytest.approx(ddp["grad_norm"], rel=1e-5)
    ddp_weights, fsdp_weights = weights(tmp_path / "ddp" / "model"), weights(tmp_path / "fsdp" / "model")
    assert set(ddp_weights) == set(fsdp_weights)
    for name, tensor in ddp_weights.items():
        torch.testing.assert_close(fsdp_weights[name], tensor, atol=1e-6, rtol=1e-5)


def test_two_process_full_finetuning_of_ouro_keeps_every_trainable_parameter_in_the_graph(tmp_path):
    """Ouro's early-exit gate is outside every sleep forward; trainable, it made DDP fail at step 2
    ("Expected to have finished reduction"). Full fine-tuning now freezes what sleep never uses."""
    config = yaml.safe_load(yaml.safe_dump(TINY))
    config.update(output_dir=str(tmp_path / "ouro"), stages=["stage2"])
    config["model"] = {"source": "tiny-ouro", "passes": 2, "window": 8}
    config["stage2"].update(max_steps=3, finetune="full")
    config["data"]["eval_examples"] = 4
    done = _launch_two_processes(config, tmp_path, "ouro")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    trained = weights(tmp_path / "ouro" / "model")
    assert any(name.startswith("fast_weights.") for name in trained)


def test_two_process_ddp_run_completes(tmp_path):
    # accelerate 1.15's `launch --cpu` starts a single process whatever --num_processes says; the
    # torchrun launcher (--multi_gpu) on a machine without CUDA runs a gloo DDP group on the CPU.
    config = yaml.safe_load(yaml.safe_dump(TINY))
    config["output_dir"] = str(tmp_path / "ddp")
    config["stage1"]["max_steps"] = 2
    config["stage2"]["max_steps"] = 2
    config["data"]["eval_examples"] = 4
    done = _launch_two_processes(config, tmp_path, "ddp")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    start = json.loads((tmp_path / "ddp" / "stage1" / "log.jsonl").read_text().splitlines()[0])
    assert start["processes"] == 2
    # Rerunning a finished run (the resume rule) republishes the model once: only the main
    # process copies (before, every CPU rank thought it was main and they raced on rmtree).
    again = _launch_two_processes(config, tmp_path, "ddp")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert not list((tmp_path / "ddp").glob(".model.publishing"))
    assert (tmp_path / "ddp" / "model" / "model.safetensors").is_file()
    assert (
        json.loads((tmp_path / "ddp" / "model" / "config.json").read_text())["model_type"] == "sleep_retrofit"
    )
