"""The Rule 110 reproduction harness (benchmarks/reproduce_rule110.py): its plumbing on a minimal
budget (2 steps per arm, N in {1, 2}, one seed) and the diagnostics script on what it trained,
the t mixture it feeds the trainer (data.mixture), and its plan."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")

HARNESS = Path(__file__).resolve().parent.parent / "benchmarks" / "reproduce_rule110.py"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def harness():
    return _load("reproduce_rule110", HARNESS)


def test_smoke_plumbing_writes_json_and_markdown(harness, tmp_path):
    argv = [
        "--profile", "smoke", "--passes", "1", "2", "--seeds", "1", "--max-steps", "2",
        "--arm", "sleep", "n1-long", "n1-wide", "full", "--n-best", "2", "--wide-gdn-heads", "8",
        "--eval-t", "0", "2", "--eval-examples", "8", "--in-process", "--out", str(tmp_path),
    ]  # fmt: skip
    assert harness.main(argv) == 0

    results = json.loads((tmp_path / "results.json").read_text())
    assert results["failed"] == []
    labels = ["N=1", "N=2", "N=1 long (x2 steps)", "N=1 wide (8 GDN heads)", "full attention (control)"]
    assert sorted(job["label"] for job in results["jobs"]) == sorted(labels)
    # One record per (run, t), each evaluated at the run's own N on the 8 test examples.
    records = {(r["label"], r["difficulty"]): r for r in results["records"]}
    assert set(records) == {(label, t) for label in labels for t in (0, 2)}
    for (label, _), record in records.items():
        assert record["num_examples"] == 8
        assert record["passes"] == (2 if label == "N=2" else 1)
        assert len(record["per_label_accuracy"]) == 3  # the smoke profile's 3 strings
        assert 0.0 <= record["exact_match"] <= 1.0
    summary = {(row["label"], row["t"]): row for row in results["summary"]}
    assert set(summary) == set(records)
    row = summary[("N=2", 2)]
    assert row["exact_match"]["mean"] == records[("N=2", 2)]["exact_match"]
    assert row["exact_match"]["std"] == 0.0 and row["seeds"] == [0]
    # The long arm trains N_best times the steps, hence tokens.
    assert summary[("N=1 long (x2 steps)", 0)]["tokens"] == 2 * summary[("N=1", 0)]["tokens"]

    # The wide arm's model really has the wider GDN.
    wide_config = json.loads(
        (tmp_path / "jobs" / "n1-wide_seed0" / "train" / "model" / "config.json").read_text()
    )
    assert wide_config["fast_weights"]["mixer_kwargs"]["num_heads"] == 8
    # The control arm evicts nothing: sliding eviction with a window past the whole example.
    full = json.loads((tmp_path / "jobs" / "full_seed0" / "train" / "model" / "config.json").read_text())
    assert full["eviction"] == "sliding" and full["window"] >= 3 * 9 + 1 + 3
    assert records[("full attention (control)", 0)]["setting"]["eviction"] == "sliding"

    markdown = (tmp_path / "results.md").read_text()
    assert "**exact match (chance 0.125)**" in markdown
    for label in labels:
        assert f" {label} |" in markdown
    assert "| 2 | " in markdown
    assert "**per-string accuracy** (string 0 = the oldest" in markdown
    per_string = summary[("N=2", 2)]["per_label_accuracy_mean"]
    assert per_string == records[("N=2", 2)]["per_label_accuracy"] and len(per_string) == 3
    for figure in ("accuracy.png", "loss.png", "per_string.png"):  # matplotlib: the dev extras
        assert (tmp_path / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", figure

    # The diagnostics read the trained models: N at test time, gates, gradient reach.
    diagnose = _load("diagnose_rule110", HARNESS.parent / "diagnose_rule110.py")
    diagnose_argv = [str(tmp_path), "--examples", "4", "--eval-passes", "1", "2", "--steps", "0", "2"]
    assert diagnose.main([*diagnose_argv, "--only", "sleep_N2_seed0", "--threads", "1"]) == 0
    (report,) = json.loads((tmp_path / "diagnostics.json").read_text())
    assert report["name"] == "sleep_N2_seed0" and report["trained_passes"] == 2
    assert set(report["exact_match_by_eval_passes"]) == {"1", "2"}
    assert all(set(per_t) == {"0", "2"} for per_t in report["exact_match_by_eval_passes"].values())
    assert len(report["gates"]) == 2  # the toy's two GDN blocks
    for gates in report["gates"].values():
        assert 0.0 < gates["decay_mean"] <= 1.0 and 0.0 < gates["beta_mean"] < 1.0
    assert len(report["gradient_reach"]) == 3 and all(v > 0 for v in report["gradient_reach"])
    assert report["parameter_gradient_norm"] > 0
    assert "| N=2 | 0 | 2 (trained) |" in (tmp_path / "diagnostics.md").read_text()

    # A report of a partly run plan names what is missing and runs nothing.
    report = tmp_path / "report"
    report_argv = [*argv[:-1], str(report), "--report-only"]
    assert harness.main(report_argv) == 0
    partial = json.loads((report / "results.json").read_text())
    assert partial["summary"] == [] and len(partial["not_run"]) == len(labels) and partial["failed"] == []
    assert "**not run**" in (report / "results.md").read_text()

    # A rerun finds every job done and trains nothing.
    before = (tmp_path / "jobs" / "sleep_N1_seed0" / "summary.json").stat().st_mtime_ns
    assert harness.main(argv) == 0
    assert (tmp_path / "jobs" / "sleep_N1_seed0" / "summary.json").stat().st_mtime_ns == before


def test_data_mixture_feeds_the_trainer_an_announced_uniform_mixture(harness):
    from sleep_retrofit.train.config import config_from_dict
    from sleep_retrofit.train.data import build_rows

    smoke = harness.PROFILES["smoke"]
    values = harness.train_config_dict(smoke, 1, 3, 2, Path("unused"))
    assert values["data"]["mixture"] == [{"steps": t} for t in range(5)]
    # Mixed t is announced: every string opens with its t token, in a chunk of W + 1.
    assert values["data"]["options"]["announce_steps"] is True
    assert values["model"]["window"] == smoke.width + 1
    rows = build_rows(config_from_dict(values), "train", 23, None)
    counts = {t: sum(row["steps"] == t for row in rows) for t in range(5)}
    assert counts == {0: 5, 1: 5, 2: 5, 3: 4, 4: 4}
    assert len({tuple(map(tuple, row["strings"])) for row in rows}) == 23  # every t its own strings
    assert [row["steps"] for row in rows] != sorted(row["steps"] for row in rows)  # shuffled
    for row in rows:
        w = smoke.width + 1
        assert [row["tokens"][j * w] for j in range(smoke.num_strings)] == [
            f"t{row['steps']}"
        ] * smoke.num_strings
    # One t per run is the paper's layout: nothing announced, L = W.
    single = harness.train_config_dict(smoke, 1, 3, 2, Path("unused"), train_t=[2])
    assert "announce_steps" not in single["data"]["options"] and single["data"]["options"]["steps"] == 2
    assert single["model"]["window"] == smoke.width and "mixture" not in single["data"]


def test_depo_smoke_reports_loss_and_accuracy_per_k(harness, tmp_path):
    argv = ["--profile", "depo-smoke", "--in-process", "--out", str(tmp_path)]
    assert harness.main(argv) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    summary = {(row["label"], row["t"]): row for row in results["summary"]}
    assert set(summary) == {(f"N={n}", k) for n in (1, 2) for k in (1, 2)}
    for row in summary.values():
        assert row["task"] == "depo" and 0.0 <= row["accuracy"]["mean"] <= 1.0 and row["loss"]["mean"] > 0
    job = json.loads((tmp_path / "jobs" / "sleep_N2_seed0" / "summary.json").read_text())["job"]
    assert job["train_config"]["data"]["options"]["hops"] == [1, 2]
    markdown = (tmp_path / "results.md").read_text()
    assert "**test loss per answer token**" in markdown and "| k | N=1 | N=2 |" in markdown


def test_plan_matches_budgets_and_rejects_bad_input(harness, tmp_path):
    cpu = harness.PROFILES["cpu"]
    jobs = harness.plan_jobs(cpu, tmp_path, passes=[1, 2, 3], seeds=2, arms=["sleep", "n1-long"])
    assert [job.name for job in jobs][:4] == [
        "sleep_N1_seed0",
        "sleep_N2_seed0",
        "sleep_N3_seed0",
        "n1-long_seed0",
    ]
    sleep_tokens = {job.tokens for job in jobs if job.arm == "sleep"}
    steps = cpu.max_steps
    # 4 strings of 16 bits, each after its t token, the query and 4 labels: equal for every N
    assert sleep_tokens == {steps * 128 * (4 * 17 + 1 + 4)}
    assert {job.steps for job in jobs if job.arm == "n1-long"} == {3 * steps}
    assert all(job.threads == 1 for job in jobs)
    fewer = harness.plan_jobs(cpu, tmp_path, passes=[1, 2], seeds=3, arms=["sleep", "full"], matched_seeds=1)
    assert [job.name for job in fewer if job.arm == "full"] == ["full_seed0"]
    assert len([job for job in fewer if job.arm == "sleep"]) == 6
    with pytest.raises(ValueError, match="matched_seeds"):
        harness.plan_jobs(cpu, tmp_path, passes=[1], seeds=2, arms=["sleep"], matched_seeds=3)
    with pytest.raises(ValueError, match="passes"):
        harness.plan_jobs(cpu, tmp_path, passes=[0], seeds=1, arms=["sleep"])
    with pytest.raises(ValueError, match="arm"):
        harness.plan_jobs(cpu, tmp_path, passes=[1], seeds=1, arms=["n2-long"])
    # FLOP matching: N=1 with more heads has about N_best times the matmul parameters.
    smoke = harness.PROFILES["smoke"]
    heads = harness.flop_matched_gdn_heads(smoke, 3)
    vocab = 14
    base = harness._matmul_parameters(harness.build_wide_toy(smoke, vocab, smoke.num_heads))
    wide = harness._matmul_parameters(harness.build_wide_toy(smoke, vocab, heads))
    assert wide / base == pytest.approx(3.0, rel=0.05)


def test_recall_sweep_overrides_the_gates_and_scores_per_t(tmp_path):
    sweep = _load("rule110_recall_sweep", HARNESS.parent / "rule110_recall_sweep.py")
    cfg = {
        **sweep.DEFAULTS,
        **{"d": 32, "steps": 2, "batch": 4, "eval_n": 8, "t": [0, 2], "announce": True, "W": 8, "S": 3},
    }
    result = sweep.run({**cfg, "A": [0.5, 1.0], "dt": [1e-3, 1e-2], "beta_bias": -3.0})
    assert set(result["per_t"]) == {0, 2}
    for exact, per_string in result["per_t"].values():
        assert 0.0 <= exact <= 1.0 and len(per_string) == 3
    # The overrides reach the model: the initial decay rates A*dt lie inside the given ranges.
    from sleep_retrofit.tasks import task_tokenizer
    from sleep_retrofit.toy import build_toy_hybrid

    model = build_toy_hybrid(len(task_tokenizer("rule110", width=8, num_strings=3, announce_steps=True)),
                             hidden_size=32, window=9)  # fmt: skip
    sweep.override_gates(model, {**cfg, "A": [0.5, 1.0], "dt": [1e-3, 1e-2], "beta_bias": -3.0})
    for block in model.fast_weights.values():
        rate = block.mixer.A_log.exp() * torch.nn.functional.softplus(block.mixer.dt_bias)
        assert bool(((rate > 0.5e-3 - 1e-9) & (rate < 1e-2 + 1e-9)).all())
        assert torch.allclose(block.mixer.b_proj.bias, torch.tensor(-3.0))
