"""Damaged files and impossible requests, per command: every one ends in exactly one line on stderr,
exit status 2 and nothing written (issue "Reliability", item 8). The argument-level tables live
beside each command's tests (tests/test_cli.py, test_evaluation.py, test_train_config.py); this
module walks what a user's files can look like: truncated, empty or garbage weights, a config that
is a JSON list or was edited by hand, a corrupt tokenizer, outputs where nothing can be written."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sleep_retrofit.cli import main as cli_main
from sleep_retrofit.presets import load_preset
from sleep_retrofit.train.recipe_cli import main as recipe_main

REPO = Path(__file__).resolve().parents[1]
TINY_RECIPE = REPO / "recipes" / "configs" / "rule110_tiny.yaml"


def _status(command: Callable[[list[str]], int], argv: list) -> int:
    try:
        return command([str(a) for a in argv])
    except SystemExit as exit_:
        return exit_.code


def _listing(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A plain base checkpoint (save_pretrained of tiny-llama) and its conversion."""
    root = tmp_path_factory.mktemp("bad_inputs")
    model, tokenizer = load_preset("tiny-llama")
    model.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    assert _status(cli_main, ["convert", "--model", root / "base", "--out", root / "converted"]) == 0
    return {"base": root / "base", "converted": root / "converted"}


# ----------------------------------------------------------------------------- damage
def _truncate(d: Path) -> None:
    weights = d / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])


def _empty(d: Path) -> None:
    (d / "model.safetensors").write_bytes(b"")


def _garbage(d: Path) -> None:
    (d / "model.safetensors").write_bytes(b"\x00garbage" * 100)


def _no_weights(d: Path) -> None:
    (d / "model.safetensors").unlink()


def _corrupt_pickle(d: Path) -> None:
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(b"not a pickle")


def _wrong_shape(d: Path) -> None:
    tensors = load_file(d / "model.safetensors")
    name = next(n for n in sorted(tensors) if n.endswith("q_proj.weight"))
    tensors[name] = torch.zeros(3, 3)
    save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})


def _config_list(d: Path) -> None:
    (d / "config.json").write_text("[1, 2]")


def _bad_tokenizer(d: Path) -> None:
    (d / "tokenizer.json").write_text("{not json")


def _edit_config(**values) -> Callable[[Path], None]:
    def edit(d: Path) -> None:
        config = json.loads((d / "config.json").read_text())
        for key, value in values.items():
            if key == "base_model_type":
                config["base_config"]["model_type"] = value
            else:
                config[key] = value
        (d / "config.json").write_text(json.dumps(config))

    return edit


# A damaged copy of the base checkpoint, given to convert (and to a recipe as model.source).
DAMAGED_BASE = {
    "truncated weights": (_truncate, "could not load the base model .*invalid header length"),
    "empty weights": (_empty, "could not load the base model .*header too small"),
    "garbage weights": (_garbage, "could not load the base model .*header too large"),
    "no weights": (_no_weights, "could not load the base model .*no file named model.safetensors"),
    "corrupt pickle": (_corrupt_pickle, r"pickle weights \(.bin\) are corrupt .*save them as safetensors"),
    "wrong shape": (
        _wrong_shape,
        r"do not fit its config.json: model.layers.0.self_attn.q_proj.weight has shape \[3, 3\] "
        r"in model.safetensors, the config needs \[64, 64\]",
    ),
    "config is a list": (_config_list, "config.json of .* holds a JSON list, not a config"),
    "corrupt tokenizer": (_bad_tokenizer, "could not load the tokenizer of .*Expecting property name"),
}

# A damaged copy of the converted checkpoint, given to info, generate and eval.
DAMAGED_CONVERTED = {
    "truncated weights": (_truncate, r"model.safetensors' is truncated: 1,000 bytes"),
    "empty weights": (_empty, "model.safetensors' is not a readable safetensors file"),
    "garbage weights": (_garbage, "model.safetensors' is not a readable safetensors file"),
    "no weights": (_no_weights, r"lacks its weights \(model.safetensors\)"),
    "wrong shape": (
        _wrong_shape,
        r"does not match its config.json: wrong shape: base.model.layers.0.self_attn.q_proj.weight \[3, 3\]",
    ),
    "config is a list": (_config_list, "config.json' holds a JSON list, not a config"),
    "corrupt tokenizer": (_bad_tokenizer, "tokenizer.json' is not readable"),
    "passes 0": (_edit_config(passes=0), r"not a valid sleep-retrofit config: passes \(N\) must be"),
    "window -1": (_edit_config(window=-1), r"not a valid sleep-retrofit config: window \(L\) must be"),
    "eviction soft": (_edit_config(eviction="soft"), "not a valid sleep-retrofit config: eviction must be"),
    "loop span backwards": (_edit_config(loop_span=[5, 2]), "not a valid sleep-retrofit config: loop_span"),
    "gpt2 base": (
        _edit_config(base_model_type="gpt2"),
        "not a valid sleep-retrofit config: unsupported model_type 'gpt2'",
    ),
}


def _damaged(source: Path, root: Path, damage: Callable[[Path], None]) -> Path:
    copy = root / "damaged"
    shutil.copytree(source, copy)
    damage(copy)
    return copy


def _assert_one_line_exit_2(command, argv, root: Path, capsys, pattern: str) -> None:
    before = _listing(root)
    assert _status(command, argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "", captured.out
    assert captured.err.endswith("\n") and captured.err.count("\n") == 1, captured.err  # one line
    assert re.search(pattern, captured.err), captured.err
    assert _listing(root) == before  # nothing written


@pytest.mark.parametrize("case", list(DAMAGED_BASE))
def test_convert_a_damaged_base(case, checkpoints, tmp_path, capsys):
    damage, pattern = DAMAGED_BASE[case]
    source = _damaged(checkpoints["base"], tmp_path, damage)
    argv = ["convert", "--model", source, "--out", tmp_path / "out"]
    _assert_one_line_exit_2(cli_main, argv, tmp_path, capsys, "^sleep-retrofit convert: error: .*" + pattern)


COMMANDS = {
    "info": lambda d, out: ["info", d],
    "generate": lambda d, out: ["generate", d, "--prompt", "hello", "--max-new-tokens", "2"],
    "eval": lambda d, out: [
        *("eval", "--model", d, "--task", "gsm_infinite", "--ops", "2", "--num-examples", "1"),
        *("--max-new-tokens", "1", "--out", out, "--no-progress"),
    ],
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("case", list(DAMAGED_CONVERTED))
def test_a_damaged_checkpoint(case, command, checkpoints, tmp_path, capsys):
    damage, pattern = DAMAGED_CONVERTED[case]
    directory = _damaged(checkpoints["converted"], tmp_path, damage)
    argv = COMMANDS[command](directory, tmp_path / "results")
    _assert_one_line_exit_2(
        cli_main, argv, tmp_path, capsys, f"^sleep-retrofit {command}: error: .*{pattern}"
    )


def _place(checkpoints: dict[str, Path], root: Path, text: str) -> str:
    (root / "a_file").write_text("the user's file")
    return text.format(converted=checkpoints["converted"], root=root)


REQUESTS = {
    "convert --out under /proc": (
        ["convert", "--model", "tiny-llama", "--out", "/proc/sleep-retrofit-out"],
        "cannot write under '/proc'",
    ),
    "convert --out under a file": (
        ["convert", "--model", "tiny-llama", "--out", "{root}/a_file/out"],
        "cannot write under .*a_file",
    ),
    "eval --out under a file": (
        ["eval", "--model", "{converted}", "--out", "{root}/a_file/out"],
        "cannot write under .*a_file",
    ),
    "eval --device meta": (
        ["eval", "--model", "{converted}", "--device", "meta", "--out", "{root}/out"],
        "device 'meta' holds no values",
    ),
    "eval --device tpu7": (
        ["eval", "--model", "{converted}", "--device", "tpu7", "--out", "{root}/out"],
        "device must be a torch device",
    ),
}
if not torch.cuda.is_available():
    REQUESTS["eval --device cuda without CUDA"] = (
        ["eval", "--model", "{converted}", "--device", "cuda", "--out", "{root}/out"],
        "CUDA is not available here; use --device cpu",
    )


@pytest.mark.parametrize("case", list(REQUESTS))
def test_impossible_requests(case, checkpoints, tmp_path, capsys):
    argv, pattern = REQUESTS[case]
    argv = [_place(checkpoints, tmp_path, a) for a in argv]
    _assert_one_line_exit_2(cli_main, argv, tmp_path, capsys, pattern)


# ----------------------------------------------------------------------------- recipes
RECIPE_INPUTS = {
    "no --config": ([], "^recipes/rule110.py: error: the following arguments are required: --config"),
    "unknown flag": (["--config", TINY_RECIPE, "--frobnicate"], "unrecognized arguments: --frobnicate"),
    "not UTF-8": (["--config", "{root}/latin1.yaml"], r"latin1.yaml is not UTF-8 text \(byte 20\)"),
    "invalid YAML": (
        ["--config", "{root}/broken.yaml"],
        r"broken.yaml is not valid YAML: .* at line \d+, column \d+$",
    ),
    "lr nan": (["--config", TINY_RECIPE, "stage1.adamw_lr=.nan"], "stage1.adamw_lr must be a finite number"),
    "heads do not divide": (
        ["--config", TINY_RECIPE, "model.num_heads=5"],
        "model.hidden_size 64 must be divisible by model.num_heads 5",
    ),
    "output_dir is a file": (
        ["--config", TINY_RECIPE, "output_dir={root}/a_file"],
        "is a file; give a directory",
    ),
    "output_dir under a file": (
        ["--config", TINY_RECIPE, "output_dir={root}/a_file/run"],
        "lies under the file",
    ),
    "source without weights": (
        ["--config", TINY_RECIPE, "model.source={root}/no_weights"],
        r"model.source: .* lacks its weights \(model.safetensors\)",
    ),
    "source with truncated weights": (
        ["--config", TINY_RECIPE, "model.source={root}/truncated"],
        "model.source: .*model.safetensors' is truncated",
    ),
}


@pytest.mark.parametrize("case", list(RECIPE_INPUTS))
def test_recipe_bad_input(case, checkpoints, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the config's default output_dir is relative
    (tmp_path / "latin1.yaml").write_bytes(b"model:\n  source: caf\xe9\n")
    (tmp_path / "broken.yaml").write_text("model:\n  source: [toy\n")
    for name, damage in (("no_weights", _no_weights), ("truncated", _truncate)):
        shutil.copytree(checkpoints["converted"], tmp_path / name)
        damage(tmp_path / name)
    argv, pattern = RECIPE_INPUTS[case]
    argv = [_place(checkpoints, tmp_path, str(a)) for a in argv]
    _assert_one_line_exit_2(lambda a: recipe_main("rule110", a), argv, tmp_path, capsys, pattern)


# ----------------------------------------------------------------------------- interrupts
def test_interrupt_while_the_toolkit_loads_exits_130(tmp_path):
    """The console script's entry point (sleep_retrofit_launcher) catches a Ctrl-C that arrives
    while torch and transformers import; simulated deterministically by an import hook that
    raises KeyboardInterrupt when sleep_retrofit.cli is imported."""
    script = (
        "import sys\n"
        "class Interrupt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'sleep_retrofit.cli':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, Interrupt())\n"
        "from sleep_retrofit_launcher import main\n"
        "sys.argv = ['sleep-retrofit', 'convert', '--model', 'tiny-llama', '--out', sys.argv[1]]\n"
        "sys.exit(main())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "out")], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 130
    assert done.stderr == "sleep-retrofit: interrupted while starting; nothing was written\n"
    assert _listing(tmp_path) == []


def test_interrupt_after_the_output_is_published_says_so(tmp_path, capsys, monkeypatch):
    """A Ctrl-C after convert has renamed its output into place must not claim nothing was
    written (it was, in full)."""
    from sleep_retrofit import cli

    def interrupted(directory):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "describe", interrupted)  # runs right after the publish
    out = tmp_path / "out"
    assert _status(cli_main, ["convert", "--model", "tiny-llama", "--out", out]) == 130
    assert (
        capsys.readouterr().err
        == f"sleep-retrofit convert: interrupted; {out} had already been written in full\n"
    )
    assert (out / "model.safetensors").is_file()
