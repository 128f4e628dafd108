"""Adaptive sleep: a chunk's passes stop once the fast-weight state has converged (tolerance),
with N as the cap; in forward, generate(), ingest() and the evaluation grid."""

from __future__ import annotations

import statistics

import pytest
import torch
from helpers import converted_with_active_blocks
from transformers import AutoModelForCausalLM

import sleep_retrofit  # noqa: F401  (registers the converted model type)
from sleep_retrofit.layers.state import FastWeightState
from sleep_retrofit.sleep import SleepCache, SleepSettings
from sleep_retrofit.sleep.engine import state_change

WINDOW = 8


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return converted_with_active_blocks(tmp_path_factory.mktemp("adaptive") / "model", WINDOW, 4)


@pytest.fixture
def model(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir).eval()


def _ids(model, length: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, model.config.vocab_size, (batch, length), generator=generator)


def _run(model, ids, **settings):
    cache = SleepCache()
    with torch.no_grad():
        logits = model(input_ids=ids, cache=cache, **settings).logits
    return logits, cache.stats["passes_per_chunk"]


def test_state_change_is_the_largest_rows_relative_change():
    before = {"a": FastWeightState(torch.tensor([[3.0, 4.0], [1.0, 0.0]]))}
    after = {"a": FastWeightState(torch.tensor([[3.0, 4.0], [0.0, 2.0]]))}  # row 0: 0; row 1: |(-1, 2)| / 2
    assert state_change(before, after) == pytest.approx(5**0.5 / 2)
    assert state_change(after, after) == 0.0
    assert state_change({}, {}) == 0.0


def test_tolerance_zero_runs_every_pass_and_a_huge_one_stops_after_the_second(model):
    """The first check comes after pass 2, so a tolerance every change is below gives exactly 2
    passes, the same numbers as fixed N = 2; one no change is below gives N passes, the same
    numbers as fixed N."""
    ids = _ids(model, 5 * WINDOW + 3)
    fixed4, per_chunk = _run(model, ids, passes=4)
    assert per_chunk == [4] * 5
    fixed2, _ = _run(model, ids, passes=2)
    early, per_chunk = _run(model, ids, passes=4, tolerance=1e9)
    assert per_chunk == [2] * 5 and torch.equal(early, fixed2)
    late, per_chunk = _run(model, ids, passes=4, tolerance=1e-12)
    assert per_chunk == [4] * 5 and torch.equal(late, fixed4)
    assert not torch.allclose(fixed2, fixed4)  # the passes matter in this model


def test_an_intermediate_tolerance_stops_chunks_where_their_state_settles(model):
    """The passes run are the first k >= 2 whose change fell below the tolerance: checked
    against the changes measured pass by pass at fixed N = 6, on inputs of one context chunk
    each (with more chunks, a chunk stopped early changes where the next one starts from)."""
    engine = model.engine(passes=6)
    original, changes = engine._consolidate, []

    def record(embeds, ctx):  # the per-pass changes of a chunk at fixed N = 6
        stack, per_pass = engine.stack, []
        hidden = stack.run(stack.prefix, embeds, ctx)
        for _ in range(6):
            before = dict(ctx.cache.states)
            hidden = stack.body_pass(hidden, ctx)
            per_pass.append(state_change(before, ctx.cache.states))
        stack.run(stack.stateful_suffix, hidden, ctx)
        changes.append(per_pass)
        return 6

    inputs = [_ids(model, WINDOW + 2, batch=1, seed=seed) for seed in range(6)]
    engine._consolidate = record
    try:
        for ids in inputs:
            _run(model, ids, passes=6)
    finally:
        engine._consolidate = original
    tolerance = statistics.median(c for per_pass in changes for c in per_pass[1:])
    expected = [next((k + 1 for k in range(1, 6) if per_pass[k] < tolerance), 6) for per_pass in changes]
    assert [_run(model, ids, passes=6, tolerance=tolerance)[1] for ids in inputs] == [[k] for k in expected]
    assert len(set(expected)) > 1


def test_tolerance_reaches_generate_ingest_and_the_config(model, model_dir):
    ids = _ids(model, 3 * WINDOW, batch=1)
    state = model.ingest(ids, tolerance=1e9)
    assert state.cache.stats["passes_per_chunk"] == [2, 2, 2] and state.tolerance == 1e9
    out = model.generate(ids, max_new_tokens=WINDOW, min_new_tokens=WINDOW, do_sample=False, tolerance=1e9)
    fixed = model.generate(ids, max_new_tokens=WINDOW, min_new_tokens=WINDOW, do_sample=False, passes=2)
    assert torch.equal(out, fixed)
    loaded = AutoModelForCausalLM.from_pretrained(model_dir, tolerance=0.25)
    assert loaded.config.tolerance == 0.25 and loaded.engine().settings.tolerance == 0.25


@pytest.mark.parametrize("bad", [-0.1, float("inf"), True, "0.1"])
def test_bad_tolerances_are_refused(bad):
    with pytest.raises(ValueError, match="tolerance must be a number >= 0"):
        SleepSettings(tolerance=bad)


def test_the_grid_reports_passes_per_chunk(model_dir, tmp_path):
    from sleep_retrofit.evaluation import EvalSpec, run_grid
    from sleep_retrofit.tasks import task_tokenizer

    options = {"width": 6, "num_strings": 2}
    task_tokenizer("rule110", **options).save_pretrained(model_dir)
    spec = dict(model=model_dir, tasks=("rule110",), passes=(4,), steps=(1,), num_examples=4, batch_size=4,
                task_options={"rule110": options}, progress=False)  # fmt: skip
    fixed = run_grid(EvalSpec(**spec, out=tmp_path / "fixed")).records[0]
    adaptive = run_grid(EvalSpec(**spec, out=tmp_path / "adaptive", tolerance=1e9)).records[0]
    assert fixed["mean_passes"] == 4.0 and adaptive["mean_passes"] == 2.0
    assert "tolerance" not in fixed["setting"] and adaptive["setting"]["tolerance"] == 1e9
