"""Evaluate a trained model across N, twice: with the toolkit's grid (free-running exact match
on held-out Rule 110 examples) and with lm-evaluation-harness (a local multiple-choice task made
of the same kind of examples, N passed as a model argument). Seconds on a CPU.

    python examples/train_two_stages.py          # writes runs/example_two_stages/model
    python examples/evaluate_across_n.py         # evaluates it at N = 1, 2, 4
    python examples/evaluate_across_n.py --model DIR --passes 1 4 --no-lm-eval

The command-line equivalents: `sleep-retrofit eval --model DIR --task rule110 --passes 1 2 4` and
`lm_eval --model hf --model_args pretrained=DIR,passes=N --tasks ...` (docs/evaluation.md).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
from pathlib import Path

from transformers import AutoTokenizer

import sleep_retrofit  # noqa: F401  (registers the converted model type with the Auto classes)
from sleep_retrofit.evaluation import EvalSpec, run_grid
from sleep_retrofit.tasks import build_dataset


def grid(model: Path, passes: list[int], task: dict, out: Path) -> None:
    spec = EvalSpec(
        model=model,
        tasks=("rule110",),
        passes=passes,
        steps=(task["steps"],),
        task_options={"rule110": {"width": task["width"], "num_strings": task["num_strings"]}},
        num_examples=32,
        batch_size=16,
        out=out,
    )
    result = run_grid(spec)
    for r in result.records:
        print(f"grid: rule110 t={r['difficulty']} N={r['passes']}: exact match {r['accuracy']:.3f}")
    print(f"grid: table {result.markdown_path}, plot {result.plot_path}")


def rule110_choices(model: Path, task: dict, work: Path) -> None:
    """A local lm-eval task: the context up to '?', and every possible answer as a choice."""
    tokenizer = AutoTokenizer.from_pretrained(model)
    answers = list(itertools.product((0, 1), repeat=task["num_strings"]))
    with (work / "rule110.jsonl").open("w") as file:
        for row in build_dataset("rule110", "test", 32, **task):
            question = row["input_ids"][: row["target_start"] + 1]
            choices = [" " + " ".join(f"s{i}_{bit}" for i, bit in enumerate(a)) for a in answers]
            record = {"question": tokenizer.decode(question), "choices": choices}
            file.write(json.dumps({**record, "answer": answers.index(tuple(row["answer"]))}) + "\n")
    (work / "sleep_rule110.yaml").write_text(
        "task: sleep_rule110\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {work / 'rule110.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{answer}}"\n'
        "target_delimiter: ''\nmetric_list:\n  - metric: acc\n"
    )


def harness(model: Path, passes: list[int], task: dict, work: Path) -> None:
    import lm_eval
    from lm_eval.tasks import TaskManager

    rule110_choices(model, task, work)
    for n in passes:
        results = lm_eval.simple_evaluate(
            model="hf",
            model_args=f"pretrained={model},passes={n},dtype=float32",
            tasks=["sleep_rule110"],
            task_manager=TaskManager(include_path=str(work)),
            batch_size=8,
            device="cpu",
        )
        print(f"lm-eval: sleep_rule110 N={n}: acc {results['results']['sleep_rule110']['acc,none']:.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="runs/example_two_stages/model", help="a trained model directory")
    parser.add_argument("--passes", type=int, nargs="+", default=[1, 2, 4], help="N values (default 1 2 4)")
    parser.add_argument("--no-lm-eval", action="store_true", help="only the grid")
    args = parser.parse_args(argv)
    model = Path(args.model)
    if not (model / "config.json").is_file():
        parser.exit(2, f"no model in {model}: run `python examples/train_two_stages.py` first\n")
    task = {"width": 6, "num_strings": 2, "steps": 1}  # what train_two_stages.py trains on
    with tempfile.TemporaryDirectory() as tmp:
        grid(model, args.passes, task, Path(tmp) / "grid")
        if args.no_lm_eval:
            return 0
        try:
            import lm_eval  # noqa: F401
        except ImportError:
            print("lm-eval is not installed (pip install 'sleep-retrofit[lm-eval]'): skipped")
            return 0
        harness(model, args.passes, task, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
