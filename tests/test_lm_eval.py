"""lm-evaluation-harness on a converted model: `lm_eval --model hf --model_args
pretrained=DIR,passes=N,window=L,eviction=E` scores exactly what the toolkit's own sleep forward
computes, for a multiple-choice and a generate_until task read from local files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

lm_eval = pytest.importorskip(
    "lm_eval", reason="the lm-eval extra is not installed: pip install -e '.[lm-eval]'"
)

from lm_eval.tasks import TaskManager  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

import sleep_retrofit  # noqa: E402,F401  (registers the converted model type)
from sleep_retrofit.convert import convert  # noqa: E402

PASSES, WINDOW = 2, 8
QUESTIONS = [
    {
        "question": "Before a chunk leaves the cache, the model",
        "choices": [" sleeps", " wakes", " forgets"],
        "answer": 0,
    },
    {"question": "Fast weights hold what attention", "choices": [" evicted", " kept"], "answer": 1},
    {
        "question": "N passes over every chunk cost compute at",
        "choices": [" ingestion", " answer time"],
        "answer": 0,
    },
]
PROMPTS = [
    {"prompt": "Sleep on every chunk before its keys are evicted, then", "target": " answer"},
    {"prompt": "A long context, four windows long, ends with the question:", "target": " why"},
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("lm_eval")
    model_dir = convert("tiny-llama", root / "model", passes=PASSES, window=WINDOW, progress=False)
    data = root / "tasks"
    data.mkdir()
    (data / "mc.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    (data / "gen.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    (data / "sleep_mc.yaml").write_text(
        "task: sleep_mc\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data / 'mc.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{answer}}"\n'
        "target_delimiter: ''\nmetric_list:\n  - metric: acc\n"
    )
    (data / "sleep_gen.yaml").write_text(
        "task: sleep_gen\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data / 'gen.jsonl'}\n"
        "test_split: test\noutput_type: generate_until\n"
        'doc_to_text: "{{prompt}}"\ndoc_to_target: "{{target}}"\n'
        "target_delimiter: ''\n"
        "generation_kwargs:\n  until: ['\\n']\n  max_gen_toks: 6\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n"
    )
    return model_dir, data


def _evaluate(model_dir: Path, data: Path, batch_size: int) -> dict:
    return lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={model_dir},passes={PASSES},window={WINDOW},eviction=sliding,dtype=float32",
        tasks=["sleep_mc", "sleep_gen"],
        task_manager=TaskManager(include_path=str(data)),
        batch_size=batch_size,
        device="cpu",
        log_samples=True,
    )


def test_lm_eval_scores_what_the_sleep_forward_computes(setup):
    model_dir, data = setup
    results = _evaluate(model_dir, data, batch_size=1)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, passes=PASSES, window=WINDOW, eviction="sliding"
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    # Multiple choice: each choice's log-likelihood is the toolkit's own forward over
    # context + choice (every prompt is longer than the window, so chunks are slept on).
    samples = results["samples"]["sleep_mc"]
    assert len(samples) == len(QUESTIONS)
    for sample in samples:
        doc = sample["doc"]
        context = tokenizer(doc["question"])["input_ids"]
        assert len(context) > 2 * WINDOW
        for choice, response in zip(doc["choices"], sample["resps"], strict=True):
            whole = tokenizer(doc["question"] + choice)["input_ids"]
            ids = torch.tensor([whole])
            with torch.no_grad():
                logits = model(ids).logits[0].log_softmax(-1)
            ours = sum(float(logits[p - 1, whole[p]]) for p in range(len(context), len(whole)))
            assert response[0][0] == pytest.approx(ours, abs=1e-4)

    # generate_until: lm-eval's greedy continuation is the model's own generate().
    for sample in results["samples"]["sleep_gen"]:
        ids = torch.tensor([tokenizer(sample["doc"]["prompt"])["input_ids"]])
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=6, do_sample=False)
        ours = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).split("\n")[0]
        assert sample["resps"][0][0] == ours

    # The harness's max_length is the base model's position limit, not a tokenizer default.
    config = json.loads((model_dir / "config.json").read_text())
    assert results["config"]["model_args"].startswith(f"pretrained={model_dir}")
    assert config["max_position_embeddings"] == config["base_config"]["max_position_embeddings"]


def test_lm_eval_batch_size_does_not_change_the_scores(setup):
    model_dir, data = setup
    one, four = _evaluate(model_dir, data, 1), _evaluate(model_dir, data, 4)
    for task in ("sleep_mc", "sleep_gen"):
        for a, b in zip(one["samples"][task], four["samples"][task], strict=True):
            if task == "sleep_mc":
                for x, y in zip(a["resps"], b["resps"], strict=True):  # [[(log-likelihood, greedy)]]
                    assert x[0][0] == pytest.approx(y[0][0], abs=1e-4)
            else:
                assert a["resps"] == b["resps"]
