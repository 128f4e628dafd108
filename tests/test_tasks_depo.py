"""Depo: answers checked by walking the cycle read back from the token sequence."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sleep_retrofit.tasks import DepoConfig, DepoTask, SleepCollator, build_dataset, score_depo


def read_back(tokens, target_start, word_length):
    """Parse the edge list and the queries from the tokens alone."""
    graph = tokens[:target_start]
    edge_tokens = 2 * word_length
    assert len(graph) % edge_tokens == 0
    successor = {}
    for i in range(0, len(graph), edge_tokens):
        u = tuple(graph[i : i + word_length])
        v = tuple(graph[i + word_length : i + edge_tokens])
        assert u not in successor, "a word has two outgoing edges"
        successor[u] = v
    queries = []
    tail = tokens[target_start:]
    query_tokens = 1 + 2 * word_length + 1
    assert len(tail) % query_tokens == 0
    for i in range(0, len(tail), query_tokens):
        hop, rest = tail[i], tail[i + 1 : i + query_tokens]
        assert hop.startswith("hop") and rest[word_length] == "->"
        queries.append((int(hop[3:]), tuple(rest[:word_length]), tuple(rest[word_length + 1 :])))
    return successor, queries


def walk(successor, word, hops):
    for _ in range(hops):
        word = successor[word]
    return word


@settings(max_examples=20, deadline=None)
@given(
    word_length=st.integers(1, 3),
    num_symbols=st.integers(5, 12),
    min_nodes=st.integers(2, 20),
    extra_nodes=st.integers(0, 20),
    num_queries=st.integers(1, 12),
    seed=st.integers(0, 2**32 - 1),
)
def test_answers_walk_the_cycle(word_length, num_symbols, min_nodes, extra_nodes, num_queries, seed):
    distinct_words = num_symbols**word_length
    min_nodes = min(min_nodes, distinct_words)
    extra_nodes = min(extra_nodes, distinct_words - min_nodes)
    config = DepoConfig(
        min_nodes=min_nodes,
        max_nodes=min_nodes + extra_nodes,
        num_queries=num_queries,
        word_length=word_length,
        num_symbols=num_symbols,
    )
    task = DepoTask(config)
    ex = task.example(random.Random(seed))
    successor, queries = read_back(ex["tokens"], ex["target_start"], word_length)
    n = ex["num_nodes"]
    assert min_nodes <= n <= min_nodes + extra_nodes and len(successor) == n
    # One cycle through every word: n steps from any word come back, visiting all of them.
    start = next(iter(successor))
    seen = {start}
    word = successor[start]
    while word != start:
        seen.add(word)
        word = successor[word]
    assert len(seen) == n
    assert len(queries) == num_queries
    for (k, source, answer), gold_k in zip(queries, ex["query_hops"], strict=True):
        assert k == gold_k and 1 <= k <= 16
        assert walk(successor, source, k) == answer
    # Loss exactly on the answer tokens, tagged with their k.
    query_tokens = 2 + 2 * word_length
    for j, (k, _, _) in enumerate(queries):
        base = ex["target_start"] + j * query_tokens
        assert (
            ex["loss_mask"][base : base + query_tokens]
            == [0] * (query_tokens - word_length) + [1] * word_length
        )
        assert ex["answer_hops"][base + query_tokens - word_length : base + query_tokens] == [k] * word_length
    assert sum(ex["loss_mask"]) == num_queries * word_length
    assert task.tokenizer()(ex["text"])["input_ids"] == ex["input_ids"]


def test_paper_sizes_and_test_protocol():
    task = DepoTask(DepoConfig.for_test())
    assert task.config.hops == (1, 2, 4, 8, 16) and task.config.min_nodes == task.config.max_nodes == 75
    ex = task.example(random.Random(0))
    assert ex["num_nodes"] == 75 and ex["target_start"] == 300  # 75 edges x 2 words x 2 tokens
    assert len(ex["tokens"]) - ex["target_start"] == 60  # 10 queries x 6 tokens
    assert set(ex["query_hops"]) <= {1, 2, 4, 8, 16}
    # The edges are shuffled: their order is not the cycle's.
    cycle = ex["cycle"]
    in_order = [f"{cycle[i]} {cycle[(i + 1) % 75]}" for i in range(75)]
    listed = [" ".join(ex["tokens"][i : i + 4]) for i in range(0, 300, 4)]
    assert sorted(listed) == sorted(in_order) and listed != in_order
    # Training and test configs share the vocabulary (hop1..hop16 always present).
    assert DepoTask().vocabulary.tokens == task.vocabulary.tokens
    # The paper's T = 360 with L = 75: graph in four windows, queries in the fifth.
    train = build_dataset("depo", "train", 8)
    batch = SleepCollator(75, pad_token_id=0, context_length=300, target_length=60)(list(train))
    assert batch["input_ids"].shape == (8, 360)
    assert not batch["loss_mask"][:, :300].any()


def test_score_depo():
    examples = [
        {"query_targets": ["a b", "c d"], "query_hops": [1, 4]},
        {"query_targets": ["e f"], "query_hops": [4]},
    ]
    scores = score_depo([["a b", ["c", "x"]], [None]], examples)
    assert scores["accuracy"] == pytest.approx(1 / 3)
    assert scores["accuracy_by_hops"] == {1: 1.0, 4: 0.0}
    assert scores["count_by_hops"] == {1: 1, 4: 2}
    assert score_depo([[["a", "b"], "c d"], ["e f"]], examples)["accuracy"] == 1.0
    with pytest.raises(ValueError, match="2 queries but 1 predictions"):
        score_depo([["a b"], ["e f"]], examples)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"hops": (0,)}, "hops"),
        ({"hops": (17,)}, "hops"),
        ({"hops": ()}, "hops"),
        ({"min_nodes": 10, "max_nodes": 5}, "max_nodes"),
        ({"min_nodes": 1}, "min_nodes"),
        ({"num_symbols": 3, "word_length": 2}, "distinct words"),
        ({"num_symbols": 27}, "num_symbols"),
        ({"num_queries": 0}, "num_queries"),
    ],
)
def test_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        DepoConfig(**options)
