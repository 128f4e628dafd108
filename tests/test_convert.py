"""sleep_retrofit.convert: conversion is the identity at N=1, writes a loadable checkpoint with
its tokenizer, rejects bad requests before writing anything, and never leaves a partial output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedConfig

import sleep_retrofit  # noqa: F401  (registers the Auto classes)
from sleep_retrofit.convert import ConvertError, convert
from sleep_retrofit.converted import describe, load_converted
from sleep_retrofit.generation import timed_generate
from sleep_retrofit.modeling import SleepRetrofitForCausalLM
from sleep_retrofit.presets import load_preset
from sleep_retrofit.retrofit import parameter_report


def _tokens(length: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(4, 100, (2, length), generator=generator)


def _listing(directory: Path) -> list[str]:
    """Everything under `directory`, hidden entries included (temp dirs are hidden)."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("converted") / "tiny-llama-sleep"
    written = convert("tiny-llama", out, passes=1, window=64, progress=False)
    assert written == out.resolve()
    return out


# ------------------------------------------------------------------------------------- identity


@pytest.mark.parametrize("preset", ["tiny-ouro", "tiny-jet-nemotron", "tiny-llama"])
def test_converted_logits_equal_base_logits(preset, tmp_path):
    out = convert(preset, tmp_path / "out", window=64, progress=False)
    converted = AutoModelForCausalLM.from_pretrained(out).eval()
    assert isinstance(converted, SleepRetrofitForCausalLM)
    base, _ = load_preset(preset)
    ids = _tokens(40)  # window 64 >= sequence: nothing is evicted
    with torch.no_grad():
        expected = base(ids).logits
        actual = converted(ids).logits
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_tokenizer_files_are_written_and_round_trip(llama_dir):
    assert (llama_dir / "tokenizer.json").is_file()
    assert (llama_dir / "tokenizer_config.json").is_file()
    tokenizer = AutoTokenizer.from_pretrained(llama_dir)
    text = "sleep on it, then answer."
    assert tokenizer.decode(tokenizer(text).input_ids) == text


def test_checkpoint_files_and_settings(llama_dir):
    files = {p.name for p in llama_dir.iterdir()}
    assert {"config.json", "model.safetensors", "modeling_sleep_retrofit.py"} <= files
    config = json.loads((llama_dir / "config.json").read_text())
    assert config["model_type"] == "sleep_retrofit"
    assert (config["passes"], config["window"], config["eviction"]) == (1, 64, "hard")
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_sleep_retrofit.SleepRetrofitForCausalLM"


def test_trust_remote_code_load_in_a_fresh_process(llama_dir, tmp_path):
    """Without `import sleep_retrofit` the shim module in the directory provides the classes."""
    ids_file, logits_file = tmp_path / "ids.pt", tmp_path / "logits.pt"
    ids = _tokens(20)
    torch.save(ids, ids_file)
    script = textwrap.dedent(
        f"""
        import sys, torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(llama_dir)!r}, trust_remote_code=True).eval()
        assert "sleep_retrofit" not in sys.modules or type(model).__name__ == "SleepRetrofitForCausalLM"
        with torch.no_grad():
            torch.save(model(torch.load({str(ids_file)!r})).logits, {str(logits_file)!r})
        print(type(model).__name__)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("SleepRetrofitForCausalLM")
    base, _ = load_preset("tiny-llama")
    with torch.no_grad():
        expected = base(ids).logits
    torch.testing.assert_close(torch.load(logits_file), expected, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------- plans, describe


def test_describe_reports_plan_parameters_and_settings(llama_dir):
    info = describe(llama_dir)
    assert (info["family"], info["model_type"], info["architecture"]) == (
        "llama",
        "llama",
        "LlamaForCausalLM",
    )
    assert info["num_layers"] == 8 and info["hidden_size"] == 64 and info["dtype"] == "float32"
    # Llama family default: a GDN block after every 4th layer.
    plan = info["fast_weights"]
    assert (plan["kind"], plan["insert_after"], plan["with_mlp"], plan["num_blocks"]) == (
        "gdn",
        [3, 7],
        False,
        2,
    )
    model = AutoModelForCausalLM.from_pretrained(llama_dir)
    report = parameter_report(model.base, model.fast_weights)
    assert info["base_parameters"] == report["base_parameters"]
    assert info["added_parameters"] == report["added_parameters"] > 0
    assert info["percent_added"] == pytest.approx(
        100 * report["added_parameters"] / report["base_parameters"]
    )
    assert info["sleep"] == {
        "passes": 1,
        "window": 64,
        "eviction": "hard",
        "loop_span": [2, 6],
        "loop_span_is_default": True,
    }
    assert info["tokenizer"] is True
    json.dumps(info)  # serialisable, for `info --json`


def test_describe_jet_nemotron_lists_native_fast_weight_layers(tmp_path):
    out = convert("tiny-jet-nemotron", tmp_path / "jet", passes=2, window=16, progress=False)
    info = describe(out)
    assert info["fast_weights"]["num_blocks"] == 0 and info["added_parameters"] == 0
    assert info["fast_weights"]["native_layers"] == [0, 1, 2, 4, 6, 7]
    assert info["sleep"]["passes"] == 2 and info["sleep"]["window"] == 16


@pytest.mark.parametrize(
    ("options", "kind", "positions", "with_mlp"),
    [
        ({"fast_weights": "mamba2", "insert_at": [1, 5], "with_mlp": True}, "mamba2", [1, 5], True),
        ({"every": 2}, "gdn", [1, 3, 5, 7], False),
        ({"fast_weights": "jet", "loop_span": (1, 7), "eviction": "sliding"}, "jet", [3, 7], False),
    ],
)
def test_plan_options_reach_the_checkpoint(tmp_path, options, kind, positions, with_mlp):
    out = convert("tiny-qwen2", tmp_path / "out", window=32, progress=False, **options)
    info = describe(out)
    plan = info["fast_weights"]
    assert (plan["kind"], plan["insert_after"], plan["with_mlp"]) == (kind, positions, with_mlp)
    if "loop_span" in options:
        assert info["sleep"]["loop_span"] == [1, 7] and not info["sleep"]["loop_span_is_default"]
        assert info["sleep"]["eviction"] == "sliding"
    model = AutoModelForCausalLM.from_pretrained(out)
    assert sorted(int(k) for k in model.fast_weights) == positions


def test_dtype_bfloat16(tmp_path):
    out = convert("tiny-llama", tmp_path / "bf16", dtype="bfloat16", progress=False)
    assert describe(out)["dtype"] == "bfloat16"
    with safe_open(out / "model.safetensors", framework="pt") as saved:
        assert {saved.get_slice(name).get_dtype() for name in saved.keys()} == {"BF16"}
    model = AutoModelForCausalLM.from_pretrained(out)
    assert {p.dtype for p in model.base.parameters()} == {torch.bfloat16}


def test_converts_a_local_checkpoint_directory(fixtures_dir, tmp_path):
    """The Ouro fixture (an upstream-layout directory, max_position_embeddings 256)."""
    source = fixtures_dir / "ouro_tiny"
    with pytest.raises(ConvertError, match=r"window \(L\) 2048 is larger than .*position limit.*1\.\.256"):
        convert(source, tmp_path / "ouro", window=2048, progress=False)
    default = describe(convert(source, tmp_path / "ouro_default", progress=False))
    assert default["sleep"]["window"] == 256  # the default window fits the model: min(2048, 256)
    out = convert(source, tmp_path / "ouro", window=128, progress=False)
    info = describe(out)
    assert info["family"] == "ouro" and info["fast_weights"]["insert_after"] == [0, 1]
    assert info["tokenizer"] is False  # the fixture ships no tokenizer; nothing invented
    base = AutoModelForCausalLM.from_pretrained(source).eval()
    converted = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(0, 128, (1, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(converted(ids).logits, base(ids).logits, atol=1e-5, rtol=1e-5)


def test_a_short_models_default_block_goes_inside_the_loop(tmp_path):
    """4 layers loop layers 1..2; the every-4th rule would put the block after layer 3, where
    sleep never passes: the default places it after the span's last layer instead."""
    from helpers import tiny_llama_config
    from transformers import LlamaForCausalLM

    LlamaForCausalLM(tiny_llama_config(num_hidden_layers=4)).save_pretrained(tmp_path / "four")
    info = describe(convert(tmp_path / "four", tmp_path / "out", window=16, progress=False))
    assert info["sleep"]["loop_span"] == [1, 3]
    assert info["fast_weights"]["insert_after"] == [2]


# ------------------------------------------------------------------------------------- bad input


def _unsupported_dir(root: Path) -> Path:
    directory = root / "gpt2-like"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    return directory


@pytest.mark.parametrize(
    ("model", "options", "message"),
    [
        ("{tmp}/missing/model", {}, r"model path .* does not exist; give an existing model directory"),
        ("tiny-nope", {}, r"unknown preset 'tiny-nope'.*valid presets: tiny-ouro, tiny-jet-nemotron"),
        ("{unsupported}", {}, r"unsupported architecture: .*model_type 'gpt2'; supported model_types: "),
        ("tiny-llama", {"passes": 0}, r"passes \(N\) must be an integer >= 1, got 0"),
        ("tiny-llama", {"window": 0}, r"window \(L\) must be an integer >= 1, got 0"),
        (
            "tiny-llama",
            {"window": 65537},
            r"window \(L\) 65537 is larger than .*choose a window in 1\.\.65536",
        ),
        (
            "tiny-llama",
            {"insert_at": [3, 8]},
            r"outside the base model.s layers.*valid indices are 0\.\.7",
        ),
        ("tiny-llama", {"insert_at": [3], "every": 2}, r"insert_at or every, not both"),
        ("tiny-llama", {"every": 9}, r"every must be an integer in 1\.\.8"),
        ("tiny-llama", {"eviction": "soft"}, r"eviction must be one of hard, sliding"),
        ("tiny-llama", {"fast_weights": "lstm"}, r"fast_weights must be one of jet, gdn, mamba2"),
        ("tiny-llama", {"dtype": "int8"}, r"dtype must be one of float32, bfloat16, float16, auto"),
        ("tiny-llama", {"loop_span": (6, 2)}, r"loop_span must be START END with 0 <= START < END <= 8"),
        (
            "tiny-ouro",
            {"loop_span": (1, 3)},
            r"Ouro loops its whole shared stack; loop_span must be \(0, 4\), got \[1, 3\]",
        ),
        ("tiny-jet-nemotron", {"fast_weights": "gdn"}, r"default inserts no blocks.*give insert_at or every"),
        (
            "tiny-llama",
            {"insert_at": [0, 7], "loop_span": (2, 6)},
            r"no inserted block lies inside the loop span \[2, 6\].*would follow layers \[0, 7\]",
        ),
    ],
)
def test_bad_requests_fail_before_writing(tmp_path, model, options, message):
    model = model.format(
        tmp=tmp_path, unsupported=_unsupported_dir(tmp_path) if "unsupported" in model else ""
    )
    before = _listing(tmp_path)
    with pytest.raises(ConvertError, match=message) as raised:
        convert(model, tmp_path / "out", progress=False, **options)
    assert "\n" not in str(raised.value)
    assert _listing(tmp_path) == before


def test_existing_output_needs_overwrite(llama_dir, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConvertError, match=r"already exists; pass overwrite \(--overwrite\)"):
        convert("tiny-llama", out, progress=False)
    assert _listing(tmp_path) == ["taken", "taken/keep.txt"]
    base, _ = load_preset("tiny-llama")
    source = tmp_path / "models" / "base"
    base.save_pretrained(source)
    for out in (source, source.parent):  # the source itself, or a directory holding it
        with pytest.raises(ConvertError, match="would replace the source model"):
            convert(source, out, overwrite=True, progress=False)
    assert (source / "model.safetensors").is_file()
    with pytest.raises(ConvertError, match="already a sleep-retrofit checkpoint"):
        convert(llama_dir, tmp_path / "again", progress=False)


def test_overwrite_never_deletes_what_convert_did_not_write(tmp_path, monkeypatch):
    """--overwrite replaces a checkpoint, never a directory of the user's files, never the
    working directory or its parents (`--out . --overwrite` in a folder of notes)."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    for out, message in (
        (".", "would delete '.', the working directory; nothing was deleted"),
        ("..", "would delete '..', a parent of the working directory"),
    ):
        with pytest.raises(ConvertError, match=message):
            convert("tiny-llama", out, overwrite=True, progress=False)
    papers = tmp_path / "papers"
    papers.mkdir()
    for name in ("a.pdf", "b.pdf", "c.pdf", "d.pdf"):
        (papers / name).write_text("x")
    with pytest.raises(
        ConvertError, match=r"is not one \(it holds 4 entries: 'a.pdf', 'b.pdf', 'c.pdf', \.\.\.\)"
    ):
        convert("tiny-llama", papers, overwrite=True, progress=False)
    assert (work / "notes.txt").read_text() == "mine" and len(list(papers.iterdir())) == 4
    empty = tmp_path / "empty"
    empty.mkdir()
    assert convert("tiny-llama", empty, overwrite=True, progress=False) == empty.resolve()


def test_leftovers_of_a_killed_conversion_are_recovered(tmp_path):
    """A SIGKILL leaves a staging directory, or (between the two renames of an overwrite) the
    old checkpoint moved aside with --out missing: the next run puts the old one back or cleans
    up, and says so."""
    out = tmp_path / "out"
    convert("tiny-llama", out, passes=2, window=32, progress=False)
    aside = tmp_path / ".out.replaced-1234abcd"
    os.replace(out, aside)  # killed after the first rename
    (tmp_path / ".out.partial-zz").mkdir()  # and a staging directory of another killed run
    with pytest.warns(UserWarning) as caught:
        with pytest.raises(ConvertError, match="already exists"):
            convert("tiny-llama", out, progress=False)  # the old one is back, so out exists
    said = " | ".join(str(w.message) for w in caught)
    assert "restored" in said and ".out.replaced-1234abcd" in said and ".out.partial-zz" in said
    assert sorted(os.listdir(tmp_path)) == ["out"] and describe(out)["sleep"]["passes"] == 2
    # A finished overwrite's old copy left beside a complete --out is deleted.
    stale = tmp_path / ".out.replaced-99999999"
    stale.mkdir()
    with pytest.warns(UserWarning, match="old copy of a replace that had finished"):
        convert("tiny-llama", out, passes=3, window=32, overwrite=True, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["out"] and describe(out)["sleep"]["passes"] == 3


def test_unreachable_hub_id_is_a_one_line_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError(
            "We couldn't connect to 'https://huggingface.co' to load the files.\nCheck your connection"
        )

    monkeypatch.setattr(PreTrainedConfig, "get_config_dict", offline)
    with pytest.raises(
        ConvertError, match=r"could not fetch the Hub config of 'nobody/nothing' \(We couldn't"
    ) as e:
        convert("nobody/nothing", tmp_path / "out", progress=False)
    assert "\n" not in str(e.value)
    assert _listing(tmp_path) == []


# ------------------------------------------------------------------------------------- atomic output


def _interrupting_save(calls: list[str]):
    """A save_pretrained that writes part of the checkpoint, then is interrupted (Ctrl-C)."""

    def save_pretrained(self, directory, *args, **kwargs):
        calls.append(str(directory))
        Path(directory, "config.json").write_text("{}")  # a partial file, as a real crash would leave
        raise KeyboardInterrupt

    return save_pretrained


def test_interrupted_conversion_leaves_nothing(tmp_path, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(SleepRetrofitForCausalLM, "save_pretrained", _interrupting_save(calls))
    with pytest.raises(KeyboardInterrupt):
        convert("tiny-llama", tmp_path / "new" / "nested" / "out", progress=False)
    assert len(calls) == 1 and Path(calls[0]).name.startswith(".out.partial-")
    assert _listing(tmp_path) == []  # no output, no temp dir, no parent directories it created


def test_overwrite_replaces_atomically(tmp_path, monkeypatch):
    out = tmp_path / "out"
    convert("tiny-llama", out, passes=1, window=32, progress=False)
    # An interrupted overwrite leaves the old checkpoint exactly as it was.
    old_files = {p.name: p.read_bytes() for p in out.iterdir()}
    with monkeypatch.context() as patch:
        patch.setattr(SleepRetrofitForCausalLM, "save_pretrained", _interrupting_save([]))
        with pytest.raises(KeyboardInterrupt):
            convert("tiny-llama", out, passes=3, overwrite=True, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == old_files
    assert _listing(tmp_path) == sorted(["out", *(f"out/{name}" for name in old_files)])
    # A completed overwrite replaces it, with no leftovers beside it.
    (out / "stale.txt").write_text("from before")
    convert("tiny-llama", out, passes=3, window=16, eviction="sliding", overwrite=True, progress=False)
    assert not (out / "stale.txt").exists()
    assert os.listdir(tmp_path) == ["out"]
    assert describe(out)["sleep"] | {"loop_span": None} == {
        "passes": 3,
        "window": 16,
        "eviction": "sliding",
        "loop_span": None,
        "loop_span_is_default": True,
    }


# ------------------------------------------------------------------------------------- generate


def test_timed_generate_matches_plain_greedy_generate(llama_dir):
    model, tokenizer = load_converted(llama_dir, passes=2, window=16)
    assert (model.config.passes, model.config.window) == (2, 16)
    prompt = "a prompt that is longer than two windows of sixteen tokens"
    report = timed_generate(model, tokenizer, prompt, max_new_tokens=6, progress=False)
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    expected = model.generate(ids, max_new_tokens=6, do_sample=False)
    assert report.completion == tokenizer.decode(expected[0, ids.shape[1] :])
    assert report.prompt_tokens == len(prompt) and report.new_tokens == 6
    # 58 prompt tokens = 3 full chunks of 16, consolidated with N=2 during ingestion; the 5 decode
    # forwards bring the stream to 63 tokens, one short of the 4th chunk.
    assert (report.prompt_consolidations, report.consolidations, report.evictions) == (3, 3, 3)
    assert report.tokens_consumed == len(prompt) + 5
    assert len(report.wake_seconds) == 5 and report.median_wake_seconds > 0
    assert report.amortised_consolidation_seconds == pytest.approx(report.consolidation_seconds / 63)
    assert report.settings.passes == 2 and report.settings.window == 16


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"passes": 0}, r"passes \(N\) must be an integer >= 1"),
        ({"window": 70000}, r"window \(L\) 70000 is larger than the position limit of the base model"),
        ({"eviction": "soft"}, r"eviction must be one of hard, sliding"),
    ],
)
def test_load_converted_rejects_bad_overrides(llama_dir, overrides, message):
    with pytest.raises(ConvertError, match=message):
        load_converted(llama_dir, **overrides)


def test_describe_and_load_reject_other_directories(tmp_path, fixtures_dir):
    with pytest.raises(ConvertError, match="is not a directory"):
        describe(tmp_path / "missing")
    with pytest.raises(ConvertError, match=r"is not a sleep-retrofit checkpoint \(model_type 'ouro'\)"):
        describe(fixtures_dir / "ouro_tiny")
    with pytest.raises(ConvertError, match="has no config.json"):
        load_converted(tmp_path)


def test_large_local_checkpoints_keep_the_loading_bars(tmp_path, monkeypatch):
    """Converting a multi-GB local checkpoint takes minutes: transformers' own per-shard bars stay
    on (the stage bar alone would look like a hang); a small one keeps the output to our bar."""
    import sleep_retrofit.convert as conversion

    base, _ = load_preset("tiny-llama")
    base.save_pretrained(tmp_path / "base")
    source = conversion.resolve_source(tmp_path / "base")
    assert source.kind == "local" and not source.shows_loading_bars()
    weights = sum(f.stat().st_size for f in (tmp_path / "base").glob("*.safetensors"))
    monkeypatch.setattr(conversion, "LARGE_CHECKPOINT_BYTES", weights)
    assert source.shows_loading_bars()
    assert not conversion.resolve_source("tiny-llama").shows_loading_bars()  # a preset loads nothing


def test_every_file_of_a_checkpoint_gets_the_umask_permissions(tmp_path):
    """safetensors writes through a private temporary file (0600); the weights must be as readable
    as the config beside them (a shared model directory that only its writer can load is broken)."""
    from sleep_retrofit.publish import current_umask

    out = convert("tiny-llama", tmp_path / "out", window=32, progress=False)
    expected = 0o666 & ~current_umask()
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert modes["model.safetensors"] == expected and set(modes.values()) == {expected}, modes
    model = AutoModelForCausalLM.from_pretrained(out)
    model.save_pretrained(tmp_path / "saved")  # save_pretrained of a converted model too
    assert (tmp_path / "saved" / "model.safetensors").stat().st_mode & 0o777 == expected


def test_describe_checks_the_weights_cheaply(llama_dir, tmp_path):
    """`info` must not call a checkpoint fine when its weights are truncated, missing or do not
    fit its config: headers and sizes are checked, no tensor is read."""
    import shutil

    from safetensors.torch import load_file, save_file

    good = describe(llama_dir)["weights"]
    assert good["files"] == ["model.safetensors"] and good["tensors"] > 0
    assert good["bytes"] == (llama_dir / "model.safetensors").stat().st_size

    def broken(name: str) -> Path:
        copy = tmp_path / name
        shutil.copytree(llama_dir, copy)
        return copy

    truncated = broken("truncated")
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ConvertError, match=r"model.safetensors' is truncated: [\d,]+ of [\d,]+ bytes"):
        describe(truncated)
    garbage = broken("garbage")
    (garbage / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(ConvertError, match="is not a readable safetensors file"):
        describe(garbage)
    absent = broken("absent")
    (absent / "model.safetensors").unlink()
    with pytest.raises(ConvertError, match=r"lacks its weights \(model.safetensors\)"):
        describe(absent)
    tensors = load_file(str(llama_dir / "model.safetensors"))
    dropped = broken("dropped")
    name = next(n for n in tensors if n.startswith("fast_weights."))
    save_file({k: v for k, v in tensors.items() if k != name}, str(dropped / "model.safetensors"))
    with pytest.raises(ConvertError, match=f"missing 1 tensor\\(s\\), e.g. {name}"):
        describe(dropped)
    reshaped = broken("reshaped")
    tensors[name] = torch.zeros(3, 5)
    save_file(tensors, str(reshaped / "model.safetensors"))
    with pytest.raises(ConvertError, match=f"wrong shape: {name} \\[3, 5\\]"):
        describe(reshaped)


def test_a_base_with_broken_weights_is_refused_in_one_line(tmp_path):
    """NaN weights, or a truncated / garbage model.safetensors, in the model to convert: one
    ConvertError naming it (SafetensorError used to escape as a traceback), nothing written."""
    from safetensors.torch import load_file, save_file

    base, _ = load_preset("tiny-llama")
    base.save_pretrained(tmp_path / "base")
    weights = tmp_path / "base" / "model.safetensors"
    tensors = load_file(str(weights))
    name = sorted(tensors)[0]
    poisoned = dict(tensors)
    poisoned[name] = torch.full_like(tensors[name], float("nan"))
    save_file(poisoned, str(weights), metadata={"format": "pt"})
    with pytest.raises(ConvertError, match=f"NaN or infinite values in {name}"):
        convert(tmp_path / "base", tmp_path / "out", progress=False)
    weights.write_bytes(b"\x00" * 16)
    with pytest.raises(ConvertError, match="could not load the base model") as raised:
        convert(tmp_path / "base", tmp_path / "out", progress=False)
    assert "\n" not in str(raised.value)
    assert not (tmp_path / "out").exists()
