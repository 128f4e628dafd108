"""Every script in examples/ runs as a user runs it (a subprocess, the default tiny sizes) and
prints what it promises."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(script: str, *args: str, timeout: int = 300) -> str:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.parametrize("extra", [[], ["--adapter-only"]])
def test_convert_and_generate(extra):
    out = _run("convert_and_generate.py", *extra)
    assert "chunk(s) of L=16, each slept on with N=2" in out and "completion:" in out
    assert ("sleep_adapter.safetensors" in out) == bool(extra)


def test_kernel_demo():
    out = _run("kernel_demo.py", "--tokens", "128")
    assert "gated delta rule, 128 tokens" in out and "JetBlock state carry" in out
    assert float(out.split("max relative difference of outputs: ")[1].split()[0]) < 1e-4


def test_peft_lora_trains_and_reloads_exactly():
    out = _run("peft_lora.py", "--steps", "3")
    losses = [float(x) for x in re.findall(r"step \d+: loss ([\d.]+)", out)]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert "adapter_model.safetensors" in out
    assert "max |logit difference|: 0.00e+00" in out


def test_train_two_stages_then_evaluate_across_n(tmp_path):
    out = _run("train_two_stages.py", "--out", str(tmp_path / "run"), "--steps", "4")
    assert "stage1: 4 steps" in out and "stage2: 4 steps" in out
    assert "stage1 changed 0 of the base's" in out  # stage 1 trains only the blocks
    changed = int(re.search(r"stage2 changed (\d+) of the base's", out).group(1))
    assert changed > 0  # the merged LoRA
    assert (tmp_path / "run" / "model" / "config.json").is_file()

    out = _run("evaluate_across_n.py", "--model", str(tmp_path / "run" / "model"), "--passes", "1", "2")
    grid = re.findall(r"grid: rule110 t=1 N=(\d): exact match ([\d.]+)", out)
    assert [n for n, _ in grid] == ["1", "2"] and all(0 <= float(a) <= 1 for _, a in grid)
    pytest.importorskip("lm_eval", reason="the lm-eval extra is not installed")
    harness = re.findall(r"lm-eval: sleep_rule110 N=(\d): acc ([\d.]+)", out)
    assert [n for n, _ in harness] == ["1", "2"]


def test_evaluate_across_n_without_a_model_says_what_to_run(tmp_path):
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "evaluate_across_n.py"), "--model", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "run `python examples/train_two_stages.py` first" in done.stderr
