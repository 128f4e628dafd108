"""Word tokenizers (save/load), fixed disjoint splits, and datasets integration."""

import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from sleep_retrofit.tasks import (
    DepoConfig,
    GSMInfiniteConfig,
    WordVocabulary,
    build_dataset,
    build_dataset_dict,
    build_word_tokenizer,
    split_seed,
    task_tokenizer,
)

# ---------------------------------------------------------------------------------------------
# Tokenizers


def test_word_tokenizer_round_trip(tmp_path):
    tok = build_word_tokenizer(["s0_0", "s0_1", "?", "->"])
    assert isinstance(tok, PreTrainedTokenizerFast)
    assert tok.convert_ids_to_tokens([0, 1, 2, 3]) == ["<pad>", "<unk>", "<bos>", "<eos>"]
    assert tok("s0_1 ? -> s0_0")["input_ids"] == [5, 6, 7, 4]
    assert tok("s0_1 what")["input_ids"] == [5, tok.unk_token_id]
    assert tok.decode([5, 6, 4]) == "s0_1 ? s0_0"
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(loaded, PreTrainedTokenizerFast)
    assert loaded.get_vocab() == tok.get_vocab()
    assert (loaded.pad_token, loaded.eos_token, loaded.padding_side) == ("<pad>", "<eos>", "left")
    batch = loaded(["s0_1", "s0_1 ? s0_0"], padding=True)
    assert batch["input_ids"] == [[0, 0, 5], [5, 6, 4]] and batch["attention_mask"][0] == [0, 0, 1]


@pytest.mark.parametrize("task, options", [("rule110", {"steps": 3}), ("depo", {})])
def test_task_tokenizer_matches_dataset_ids(tmp_path, task, options):
    data = build_dataset(task, "validation", 5, **options)
    task_tokenizer(task, **options).save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    for row in data:
        assert tok(row["text"])["input_ids"] == row["input_ids"]
        assert tok.convert_ids_to_tokens(row["input_ids"]) == row["tokens"]


def test_vocabulary_errors():
    with pytest.raises(ValueError, match="appears twice"):
        WordVocabulary(["a", "a"])
    with pytest.raises(ValueError, match="without whitespace"):
        WordVocabulary(["a b"])
    with pytest.raises(ValueError, match="clashes with a special token"):
        WordVocabulary(["<pad>"])
    with pytest.raises(ValueError, match="not in this task's vocabulary"):
        WordVocabulary(["a"]).ids(["b"])
    with pytest.raises(ValueError, match="no tokenizer of its own"):
        task_tokenizer("gsm_infinite")


# ---------------------------------------------------------------------------------------------
# Splits: fixed seeds, and no example in two splits -- checked on configurations so small that
# independent draws would collide constantly.


def _canonical_cycle(words):
    start = min(range(len(words)), key=words.__getitem__)
    return tuple(words[start:] + words[:start])


SMALL_SPACES = [
    # 2 strings of 4 bits: 256 possible examples.
    ("rule110", {"width": 4, "num_strings": 2, "steps": 2}, lambda row: tuple(map(tuple, row["strings"]))),
    # cycles of 3-4 one-symbol words over 6 symbols: 130 possible graphs.
    (
        "depo",
        {"config": DepoConfig(min_nodes=3, max_nodes=4, word_length=1, num_symbols=6, num_queries=2)},
        lambda row: _canonical_cycle(row["cycle"]),
    ),
    # one-op symbolic problems: the key is "assign V = c" and the value.
    (
        "gsm_infinite",
        {"subset": "symbolic", "ops": (1, 2)},
        lambda row: (tuple(sorted(row["problem"].split(". "))),),
    ),
    (
        "gsm_infinite",
        {"subset": "medium", "ops": (1, 2)},
        lambda row: (tuple(sorted(row["problem"].split(". "))), row["question"]),
    ),
]


@pytest.mark.parametrize(
    "task, options, content", SMALL_SPACES, ids=["rule110", "depo", "symbolic", "medium"]
)
def test_splits_never_overlap(task, options, content):
    sizes = {"train": 300, "validation": 40, "test": 40}
    splits = build_dataset_dict(task, sizes, **options)
    seen = {split: {content(row) for row in splits[split]} for split in sizes}
    assert len(splits["train"]) == 300
    assert not seen["train"] & seen["test"]
    assert not seen["train"] & seen["validation"]
    assert not seen["validation"] & seen["test"]
    if task == "rule110":
        # Without the partition 300 draws from 256 examples would certainly repeat test examples.
        assert len(seen["train"]) > 100


def test_fixed_seeds_and_determinism():
    assert split_seed("rule110", "train") == split_seed("rule110", "train", 0)
    assert len({split_seed("rule110", s) for s in ("train", "validation", "test")}) == 3
    first = build_dataset("rule110", "train", 20, steps=6).to_list()
    assert first == build_dataset("rule110", "train", 20, steps=6).to_list()
    assert first != build_dataset("rule110", "train", 20, steps=6, seed=1).to_list()
    assert [row["id"] for row in first] == list(range(20))
    medium = build_dataset(
        "gsm_infinite", "test", 5, config=GSMInfiniteConfig(ops=(3, 4), context_tokens=300)
    )
    assert (
        medium.to_list()
        == build_dataset(
            "gsm_infinite", "test", 5, config=GSMInfiniteConfig(ops=(3, 4), context_tokens=300)
        ).to_list()
    )


def test_too_small_an_example_space_is_an_error():
    # One string of one bit: two possible examples cannot fill three splits.
    failures = 0
    for split in ("train", "validation", "test"):
        try:
            build_dataset("rule110", split, 3, width=1, num_strings=1)
        except ValueError as err:
            assert "too few distinct examples" in str(err)
            failures += 1
    assert failures >= 1


# ---------------------------------------------------------------------------------------------
# datasets integration


@pytest.mark.parametrize(
    "task, options",
    [
        ("rule110", {"steps": 4}),
        ("depo", {"config": DepoConfig.for_test(hops=(8,))}),
        ("gsm_infinite", {"subset": "symbolic", "ops": (2, 5), "context_tokens": 500}),
        ("gsm_infinite", {"subset": "hard", "ops": (3,), "context_tokens": 300}),
    ],
)
def test_save_to_disk_and_parquet(tmp_path, task, options):
    data = build_dataset(task, "test", 6, **options)
    assert len(data) == 6
    data.save_to_disk(tmp_path / "disk")
    import datasets

    assert datasets.load_from_disk(tmp_path / "disk").to_list() == data.to_list()
    data.to_parquet(tmp_path / "data.parquet")
    assert pq.read_table(tmp_path / "data.parquet").to_pylist() == data.to_list()
    assert f'"task": "{task}"' in data.info.description and '"split": "test"' in data.info.description


def test_dataset_dict_with_a_test_config_and_gsm_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    splits = build_dataset_dict(
        "depo", {"train": 4, "test": 4}, configs={"test": DepoConfig.for_test(hops=(16,))}
    )
    assert all(set(row["query_hops"]) == {16} for row in splits["test"])
    assert all(row["num_nodes"] == 75 for row in splits["test"])
    backend = Tokenizer(models.WordLevel({"<unk>": 0, "<pad>": 1}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>")
    gsm = build_dataset(
        "gsm_infinite", "validation", 3, tokenizer=tok, sleep_options={"question_position": "after"}
    )
    assert {"input_ids", "loss_mask", "target_start", "problem", "solution"} <= set(gsm.column_names)
    with pytest.raises(ValueError, match="gsm_infinite only"):
        build_dataset("rule110", "test", 2, tokenizer=tok)
    with pytest.raises(ValueError, match="not in sizes"):
        build_dataset_dict("depo", {"train": 2}, configs={"test": DepoConfig.for_test()})


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: build_dataset("rule_110", "train", 2), "unknown task 'rule_110'"),
        (lambda: build_dataset("rule110", "dev", 2), "split must be one of"),
        (lambda: build_dataset("rule110", "train", -1), "num_examples"),
        (lambda: build_dataset("rule110", "train", 2, steps=-3), "steps"),
        (lambda: build_dataset("depo", "train", 2, config=GSMInfiniteConfig()), "must be a DepoConfig"),
        (lambda: build_dataset("gsm_infinite", "train", 2, subset="easy"), "unknown GSM-Infinite subset"),
        (lambda: build_dataset("gsm_infinite", "train", 2, ops=(99,)), "op count"),
    ],
)
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


class _Terminal:
    """A stand-in stderr that says it is a terminal (tqdm's auto mode shows bars only there)."""

    def __init__(self):
        self.text = []

    def write(self, text):
        self.text.append(text)

    def flush(self):
        pass

    def isatty(self):
        return True


def test_drawing_a_large_split_shows_progress_on_a_terminal(monkeypatch):
    import sys

    from sleep_retrofit.tasks import splits

    monkeypatch.setattr(splits, "PROGRESS_MIN_EXAMPLES", 50)
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    rows = build_dataset("rule110", "train", 60, width=6, num_strings=2, steps=1)
    assert len(rows) == 60
    shown = "".join(terminal.text)
    assert "rule110 train" in shown and "/60 [" in shown  # counted in examples
    quiet = _Terminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    build_dataset("rule110", "train", 40, width=6, num_strings=2, steps=1)  # below the threshold
    assert "".join(quiet.text) == ""
