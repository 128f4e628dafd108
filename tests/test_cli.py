"""The `sleep-retrofit` command line: convert / info / generate / presets / demo, and the rule that
every bad input is one line on stderr, exit status 2, and nothing written."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sleep_retrofit import convert as convert_module
from sleep_retrofit.cli import main
from sleep_retrofit.converted import describe
from sleep_retrofit.presets import PRESETS, load_preset

LONG_PROMPT = (
    "Sleep on every chunk before its keys and values are evicted, then answer."  # 73 characters = tokens
)


def run(argv: list[str]) -> int:
    """main(argv)'s exit status, whether it returns it or argparse raises SystemExit."""
    try:
        return main([str(a) for a in argv])
    except SystemExit as exit_:
        return exit_.code


def _listing(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "demo"
    status = run(["convert", "--model", "tiny-llama", "--out", out, "--passes", "2", "--window", "16"])
    assert status == 0
    return out


def test_convert_prints_a_summary_and_writes_a_loadable_checkpoint(tmp_path, capsys):
    out = tmp_path / "jet"
    argv = ["convert", "--model", "tiny-jet-nemotron", "--out", out, "--insert-at", "1,5"]
    argv += ["--fast-weights", "gdn", "--with-mlp", "--window", "64", "--eviction", "sliding"]
    assert run(argv) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out.resolve()}" in printed
    assert "2 gdn block(s) with MLP after layers 1, 5" in printed
    assert "native fast weights  jet layers 0, 1, 2, 4, 6, 7" in printed
    assert "passes N=1, window L=64, eviction sliding, loop body layers 2..5 (family default)" in printed
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    base, _ = load_preset("tiny-jet-nemotron")
    ids = torch.randint(4, 100, (1, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # window 64 >= 30 tokens and N=1: the identity
        torch.testing.assert_close(model(ids).logits, base(ids).logits, atol=1e-5, rtol=1e-5)
    assert AutoTokenizer.from_pretrained(out).decode([40, 41]) == "DE"


def test_info_text_and_json(converted, capsys):
    assert run(["info", converted]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0] == str(converted.resolve())
    assert "LlamaForCausalLM (model_type llama, family llama), 8 layers, hidden 64, float32" in text
    assert "2 gdn block(s) without MLP after layers 3, 7" in text
    assert "passes N=2, window L=16, eviction hard, loop body layers 2..5 (family default)" in text
    assert run(["info", converted, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info == describe(converted)
    assert f"+{info['percent_added']:.2f}%" in text


def test_generate_prints_completion_and_timings(converted, capsys):
    assert run(["generate", converted, "--prompt", LONG_PROMPT, "--max-new-tokens", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    # The completion is what plain greedy generate() gives (the step clock changes nothing).
    model = AutoModelForCausalLM.from_pretrained(converted).eval()
    tokenizer = AutoTokenizer.from_pretrained(converted)
    ids = tokenizer(LONG_PROMPT, return_tensors="pt").input_ids
    expected = tokenizer.decode(model.generate(ids, max_new_tokens=5, do_sample=False)[0, ids.shape[1] :])
    assert lines[0] == "completion (5 tokens):"
    assert "\n".join(lines[1:-5]) == expected
    summary = "\n".join(lines[-5:])
    assert len(LONG_PROMPT) == 73
    assert "--- 73 prompt tokens; passes N=2, window L=16, eviction hard" in summary
    # 73 tokens = 4 full chunks of 16 (+ 9), each consolidated with 2 passes while ingesting the prompt;
    # the 4 decode forwards bring the stream to 77 tokens, short of the 5th chunk.
    assert "s in 4 consolidation(s)" in summary
    assert "consolidation           4 chunk(s)" in summary
    assert "wake decode             median" in summary and "over 4 step(s)" in summary
    assert "over 77 tokens consumed" in summary


def test_generate_overrides_and_seeded_sampling(converted, capsys):
    argv = ["generate", converted, "--prompt", LONG_PROMPT, "--max-new-tokens", "4", "--passes", "1"]
    argv += ["--window", "32", "--eviction", "sliding", "--sample", "--temperature", "0.7", "--seed", "5"]
    assert run(argv) == 0
    first = capsys.readouterr().out
    assert "passes N=1, window L=32, eviction sliding" in first
    # N=1: every chunk's wake pass is its consolidation; 2 chunks evicted, none re-run.
    assert "0 chunk(s) in 0.000 s (2 eviction(s)" in first
    assert run(argv) == 0
    second = capsys.readouterr().out
    assert first.split("---")[0] == second.split("---")[0]  # same seed, same completion


def test_presets_lists_every_preset(capsys):
    assert run(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(PRESETS)


# ------------------------------------------------------------------------------------- bad input


def _unsupported(root: Path) -> Path:
    directory = root / "gpt2-like"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    return directory


def _taken(root: Path) -> Path:
    directory = root / "taken"
    directory.mkdir()
    (directory / "notes.txt").write_text("the user's own file")
    return directory


def _truncated(root: Path, converted: Path) -> Path:
    import shutil

    copy = root / "truncated"
    shutil.copytree(converted, copy)
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return copy


CONVERT = ["convert", "--model", "tiny-llama"]

BAD_INPUTS = {
    "missing-path": (
        ["convert", "--model", "{tmp}/nope", "--out", "{tmp}/out"],
        "model path .* does not exist",
    ),
    "unknown-preset": (
        ["convert", "--model", "tiny-nope", "--out", "{tmp}/out"],
        "unknown preset 'tiny-nope'.*tiny-ouro",
    ),
    "unsupported": (
        ["convert", "--model", "{unsupported}", "--out", "{tmp}/out"],
        "unsupported architecture.*llama, mistral",
    ),
    "passes-0": (
        [*CONVERT, "--out", "{tmp}/out", "--passes", "0"],
        "--passes: expected a positive integer, got 0",
    ),
    "window-0": (
        [*CONVERT, "--out", "{tmp}/out", "--window", "0"],
        "--window: expected a positive integer, got 0",
    ),
    "window-too-long": (
        [*CONVERT, "--out", "{tmp}/out", "--window", "100000"],
        r"larger than .* choose a window in 1\.\.65536",
    ),
    "insert-at-outside": (
        [*CONVERT, "--out", "{tmp}/out", "--insert-at", "3,8"],
        r"outside the base model.s layers: .* valid indices are 0\.\.7",
    ),
    "insert-at-syntax": (
        [*CONVERT, "--out", "{tmp}/out", "--insert-at", "3,x"],
        "comma-separated layer indices like 3,7,11",
    ),
    "insert-at-and-every": (
        [*CONVERT, "--out", "{tmp}/out", "--insert-at", "3", "--every", "2"],
        "not allowed with argument",
    ),
    "eviction": (
        [*CONVERT, "--out", "{tmp}/out", "--eviction", "soft"],
        r"invalid choice: 'soft' \(choose from '?hard'?, '?sliding",
    ),
    "fast-weights": (
        [*CONVERT, "--out", "{tmp}/out", "--fast-weights", "lstm"],
        r"choose from '?jet'?, '?gdn'?, '?mamba2",
    ),
    "loop-span": ([*CONVERT, "--out", "{tmp}/out", "--loop-span", "6", "2"], r"0 <= START < END <= 8"),
    "out-exists": ([*CONVERT, "--out", "{taken}"], r"already exists; pass overwrite \(--overwrite\)"),
    "overwrite-not-a-checkpoint": (
        [*CONVERT, "--out", "{taken}", "--overwrite"],
        r"replaces only a sleep-retrofit checkpoint, and .* is not one .*nothing was deleted",
    ),
    "no-model": (["convert", "--out", "{tmp}/out"], "the following arguments are required: --model"),
    "info-missing": (["info", "{tmp}/nope"], "is not a directory"),
    "info-truncated-weights": (["info", "{truncated}"], r"model.safetensors' is truncated"),
    "info-not-converted": (
        ["info", "{unsupported}"],
        r"is not a sleep-retrofit checkpoint \(model_type 'gpt2'\)",
    ),
    "generate-not-converted": (
        ["generate", "{unsupported}", "--prompt", "x"],
        "is not a sleep-retrofit checkpoint",
    ),
    "generate-window": (
        ["generate", "{converted}", "--prompt", "x", "--window", "70000"],
        "larger than the position limit of the base model",
    ),
    "generate-temperature": (
        ["generate", "{converted}", "--prompt", "x", "--temperature", "0"],
        r"--temperature: expected a temperature in \[0.001, 1000\], got '0'",
    ),
    "generate-temperature-tiny": (
        ["generate", "{converted}", "--prompt", "x", "--sample", "--temperature", "1e-300"],
        r"--temperature: expected a temperature in \[0.001, 1000\], got '1e-300'",
    ),
    "generate-temperature-inf": (
        ["generate", "{converted}", "--prompt", "x", "--sample", "--temperature", "inf"],
        r"--temperature: expected a temperature in \[0.001, 1000\], got 'inf'",
    ),
    "generate-seed": (
        ["generate", "{converted}", "--prompt", "x", "--sample", "--seed", "100000000000000000000000"],
        r"--seed: expected a seed in \[0, 2\*\*63\)",
    ),
    "generate-forever": (
        ["generate", "{converted}", "--prompt", "x", "--max-new-tokens", "100000000000"],
        r"--max-new-tokens: expected an integer in \[1, 1,000,000\], got 100000000000",
    ),
    "generate-empty-prompt": (
        ["generate", "{converted}", "--prompt", ""],
        "prompt must be a non-empty string",
    ),
    "greedy-and-sample": (
        ["generate", "{converted}", "--prompt", "x", "--greedy", "--sample"],
        "not allowed with argument",
    ),
    "unknown-command": (["frobnicate"], "invalid choice: 'frobnicate'"),
}


@pytest.mark.parametrize(("argv", "message"), list(BAD_INPUTS.values()), ids=list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, converted, capsys, argv, message):
    places = {"tmp": tmp_path, "converted": converted}
    if any("{unsupported}" in a for a in argv):
        places["unsupported"] = _unsupported(tmp_path)
    if any("{taken}" in a for a in argv):
        places["taken"] = _taken(tmp_path)
    if any("{truncated}" in a for a in argv):
        places["truncated"] = _truncated(tmp_path, converted)
    argv = [a.format(**places) for a in argv]
    before, converted_before = _listing(tmp_path), _listing(converted)
    assert run(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    error = captured.err
    assert error.endswith("\n") and error.count("\n") == 1, error  # exactly one line
    assert error.startswith("sleep-retrofit")
    assert re.search(message, error), error
    assert _listing(tmp_path) == before and _listing(converted) == converted_before


def test_interrupt_is_reported_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    def interrupted(self, directory, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(convert_module.SleepRetrofitForCausalLM, "save_pretrained", interrupted)
    assert run(["convert", "--model", "tiny-llama", "--out", tmp_path / "out"]) == 130
    assert capsys.readouterr().err == "sleep-retrofit convert: interrupted; nothing was written\n"
    assert _listing(tmp_path) == []


def test_console_script_exit_status(tmp_path):
    """A real process: the status and the single stderr line reach the shell."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sleep_retrofit.cli",
            "convert",
            "--model",
            "tiny-nope",
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "unknown preset 'tiny-nope'" in result.stderr
    assert _listing(tmp_path) == []
