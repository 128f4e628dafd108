"""Rule 110: labels against a direct cell-by-cell simulation, the paper's layout, scoring."""

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sleep_retrofit.tasks import Rule110Config, Rule110Task, SleepCollator, build_dataset, score_rule110
from sleep_retrofit.tasks.rule110 import rule110_evolve, rule110_step

# The rule written out as a table, independent of the generator's bit trick.
RULE_TABLE = {
    (1, 1, 1): 0,
    (1, 1, 0): 1,
    (1, 0, 1): 1,
    (1, 0, 0): 0,
    (0, 1, 1): 1,
    (0, 1, 0): 1,
    (0, 0, 1): 1,
    (0, 0, 0): 0,
}


def direct_step(cells: list[int], boundary: str) -> list[int]:
    width = len(cells)
    out = []
    for i in range(width):
        if boundary == "periodic":
            left, right = cells[(i - 1) % width], cells[(i + 1) % width]
        else:
            left = cells[i - 1] if i > 0 else 0
            right = cells[i + 1] if i < width - 1 else 0
        out.append(RULE_TABLE[(left, cells[i], right)])
    return out


def direct_first_bit(cells: list[int], steps: int, boundary: str) -> int:
    for _ in range(steps):
        cells = direct_step(cells, boundary)
    return cells[0]


def test_one_step_by_hand():
    # periodic: cell 0 sees (1, 0, 0) -> 0, cell 2 sees (0, 0, 1) -> 1, cell 3 sees (0, 1, 0) -> 1.
    assert rule110_step(np.array([0, 0, 0, 1]), "periodic").tolist() == [0, 0, 1, 1]
    # The boundary matters at the right end: periodic cell 3 sees (0, 0, 1) -> 1, zero sees (0, 0, 0) -> 0.
    assert rule110_step(np.array([1, 0, 0, 0]), "periodic").tolist() == [1, 0, 0, 1]
    assert rule110_step(np.array([1, 0, 0, 0]), "zero").tolist() == [1, 0, 0, 0]


@settings(max_examples=25, deadline=None)
@given(
    width=st.integers(1, 30),
    steps=st.integers(0, 40),
    num_strings=st.integers(1, 5),
    boundary=st.sampled_from(["periodic", "zero"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_labels_match_direct_simulation(width, steps, num_strings, boundary, seed):
    task = Rule110Task(width=width, steps=steps, num_strings=num_strings, boundary=boundary)
    example = task.example(random.Random(seed))
    assert example["answer"] == [direct_first_bit(s, steps, boundary) for s in example["strings"]]
    # The whole evolved state, not just the first bit.
    state = example["strings"][0]
    for _ in range(steps):
        state = direct_step(state, boundary)
    assert rule110_evolve(np.array(example["strings"][0]), steps, boundary).tolist() == state


@pytest.mark.parametrize("per_string_tokens", [True, False])
def test_layout(per_string_tokens):
    task = Rule110Task(steps=5, per_string_tokens=per_string_tokens)
    ex = task.example(random.Random(3))
    S, W = 4, 24
    assert len(ex["tokens"]) == S * W + 1 + S == 101
    assert ex["target_start"] == S * W and ex["tokens"][S * W] == "?"
    assert ex["loss_mask"] == [0] * (S * W + 1) + [1] * S
    for j in range(S):
        string_tokens = ex["tokens"][j * W : (j + 1) * W]
        label_token = ex["tokens"][S * W + 1 + j]
        if per_string_tokens:
            assert string_tokens == [f"s{j}_{b}" for b in ex["strings"][j]]
            assert label_token == f"s{j}_{ex['answer'][j]}"
        else:
            assert string_tokens == [str(b) for b in ex["strings"][j]]
            assert label_token == str(ex["answer"][j])
    assert task.tokenizer()(ex["text"])["input_ids"] == ex["input_ids"]
    assert task.parse_labels(ex["tokens"][-S:]) == ex["answer"]


def test_paper_layout_one_string_per_chunk():
    data = build_dataset("rule110", "test", 6, steps=4)
    batch = SleepCollator(24, pad_token_id=0)(list(data))
    assert batch["input_ids"].shape == (6, 101)
    assert batch["attention_mask"].all()
    for row, ex in zip(batch["input_ids"].tolist(), data, strict=True):
        for j in range(4):
            assert row[24 * j : 24 * (j + 1)] == ex["input_ids"][24 * j : 24 * (j + 1)]
        assert row[96:] == ex["input_ids"][96:]  # the target chunk: "?" and the 4 labels
    assert not batch["loss_mask"][:, :96].any() and batch["loss_mask"][:, 97:].all()


def test_announced_steps_open_every_context_chunk():
    """With announce_steps every string's chunk starts with its t token, the chunk is W + 1
    tokens, and the vocabulary (so every id) is the same whatever t is."""
    W, S = 16, 4
    tasks = {t: Rule110Task(width=W, steps=t, announce_steps=True) for t in (0, 3, 17)}
    assert {task.chunk_length for task in tasks.values()} == {W + 1}
    assert Rule110Task(width=W).chunk_length == W
    vocabularies = {tuple(task.symbols()) for task in tasks.values()}
    assert len(vocabularies) == 1
    # The unannounced ids are unchanged (step tokens are appended after them).
    plain = Rule110Task(width=W).symbols()
    assert list(next(iter(vocabularies)))[: len(plain)] == plain

    data = build_dataset("rule110", "test", 5, width=W, steps=3, announce_steps=True)
    batch = SleepCollator(W + 1, pad_token_id=0)(list(data))
    t3 = tasks[3].vocabulary.ids(["t3"])[0]
    for row, ex in zip(batch["input_ids"].tolist(), data, strict=True):
        assert ex["target_start"] == S * (W + 1)
        for j in range(S):
            chunk = row[(W + 1) * j : (W + 1) * (j + 1)]
            assert chunk[0] == t3
            assert chunk[1:] == tasks[3].vocabulary.ids([f"s{j}_{b}" for b in ex["strings"][j]])
        assert ex["tokens"][S * (W + 1)] == "?"
    # The same strings at another t (splits are by strings): only the step tokens and labels differ.
    other = build_dataset("rule110", "test", 5, width=W, steps=17, announce_steps=True)
    assert [ex["strings"] for ex in other] == [ex["strings"] for ex in data]
    assert other[0]["tokens"][0] == "t17"


def test_parse_labels_rejects_other_strings_tokens():
    task = Rule110Task()
    assert task.parse_labels(["s0_1", "s0_1", "s2_0", "junk"]) == [1, None, 0, None]
    with pytest.raises(ValueError, match="expected 4 label tokens"):
        task.parse_labels(["s0_1"])


def test_score_rule110():
    targets = [[1, 0, 1, 1], [0, 0, 1, 1]]
    perfect = score_rule110(targets, targets)
    assert perfect["exact_match"] == 1.0 and perfect["per_label_accuracy"] == [1.0] * 4
    assert perfect["chance_exact_match"] == 1 / 16 and perfect["chance_per_label"] == 0.5
    # Label 0 is 1 in half the rows; label 2 is always 1 -> the majority guess [1, 0, 1, 1] is right once.
    assert perfect["majority_per_label"] == [0.5, 1.0, 1.0, 1.0] and perfect["majority_exact_match"] == 0.5
    scores = score_rule110([[1, 0, 1, 0], [0, None, 1, 1]], targets)
    assert scores["exact_match"] == 0.0
    assert scores["per_label_accuracy"] == [1.0, 0.5, 1.0, 0.5]
    with pytest.raises(ValueError, match="differ in length"):
        score_rule110([[1, 0, 1, 1]], targets)
    with pytest.raises(ValueError, match="expected 4 labels"):
        score_rule110([[1, 0], [0, 0, 1, 1]], targets)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"steps": -1}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"width": 0}, "width"),
        ({"num_strings": 0}, "num_strings"),
        ({"boundary": "reflect"}, "boundary"),
        ({"announce_steps": 1}, "announce_steps"),
        ({"announce_steps": True, "steps": 64}, "no step token"),
        ({"announce_steps": True, "steps": 8, "step_vocabulary": 0}, "step_vocabulary"),
    ],
)
def test_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        Rule110Config(**options)
