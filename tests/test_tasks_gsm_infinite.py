"""GSM-Infinite: generated problems solved from their text alone (not from the generator's
bookkeeping), the Hub-file loader, the official scorers, and the prompt layouts."""

import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from sleep_retrofit.tasks.gsm_infinite import (
    TEMPLATES,
    GSMInfiniteConfig,
    accuracy_by_op,
    approximate_token_count,
    extract_realistic_answer,
    extract_symbolic_answer,
    generate_gsm_infinite,
    gold_realistic_answer,
    leaderboard_score,
    load_gsm_infinite,
    official_messages,
    score_gsm_infinite,
    score_realistic,
    score_symbolic,
    sleep_features,
    sleep_texts,
    tokenize_for_sleep,
)

# ---------------------------------------------------------------------------------------------
# An independent reader of symbolic problems.


def solve_symbolic(problem):
    statements = re.findall(r"assign (V\d+) = (V\d+|\d+)(?: ([+-]) 1)?\.", problem)
    assert len(statements) == problem.count("assign"), "a statement did not parse"
    rules = {}
    for target, source, sign in statements:
        assert target not in rules, f"{target} assigned twice"
        rules[target] = (source, {"+": 1, "-": -1, "": 0}[sign])
    values = {}
    changed = True
    while changed:  # fixpoint: derive whatever can be derived
        changed = False
        for target, (source, delta) in rules.items():
            if target in values:
                continue
            if source.isdigit():
                values[target] = int(source)
            elif source in values:
                values[target] = values[source] + delta
            else:
                continue
            changed = True
    variables = set(rules) | {source for source, _ in rules.values() if not source.isdigit()}
    return values, variables


@settings(max_examples=20, deadline=None)
@given(op=st.integers(1, 60), length=st.sampled_from([0, 500, 3000]), seed=st.integers(0, 10**6))
def test_symbolic_answers_from_the_text(op, length, seed):
    (row,) = generate_gsm_infinite("symbolic", op, 1, seed=seed, context_tokens=length)
    values, variables = solve_symbolic(row["problem"])
    assert len(values) == op  # exactly the core tree is derivable; the noise tree is not
    assert len(variables) == row["n"] == op + int(length * 828 / 9668)
    expected = sorted(v for v, value in values.items() if value == row["answer_q"])
    assert row["answer_list"] == expected and expected
    assert row["op"] == op and row["length"] == length and row["d"] == 1
    # The solution's derived values and final answer agree with the reader.
    derived = dict(
        re.findall(r"^(V\d+) = (-?\d+);$", row["solution"].split("Derived variables are:")[1], re.M)
    )
    assert {v: int(x) for v, x in derived.items()} == values
    assert set(row["solution"].rstrip().split("ANSWER:\n")[1].split(", ")) == set(expected)
    assert score_symbolic(row["solution"], row["answer_list"])
    content = row["messages"][0]["content"]
    assert content.startswith("<context>\n" + row["problem"]) and content.endswith(row["question"])


# ---------------------------------------------------------------------------------------------
# An independent reader of realistic problems: parse the sentences, evaluate the DAG, and
# count the operations of the question's ancestors by the documented rule.


class RealisticReader:
    def __init__(self, template_name, problem):
        self.t = TEMPLATES[template_name]
        self.stated = {}
        self.values = {}
        for sentence in re.split(r"(?<=\.) ", problem.strip()):
            match = re.fullmatch(r"(.+?) equals (.+)\.", sentence)
            assert match, f"unparsed sentence {sentence!r}"
            subject = match.group(1)
            quantity = self.quantity(subject[0].lower() + subject[1:])
            assert quantity[0] in ("count", "average"), f"implicit quantity stated: {sentence!r}"
            assert quantity not in self.stated, f"stated twice: {sentence!r}"
            self.stated[quantity] = self.expression(match.group(2))

    def quantity(self, phrase):
        t = self.t
        for kind, noun in (("total", t.item_total), ("child_total", t.per_item_total)):
            prefix = f"the total number of {noun} in "
            if phrase.startswith(prefix):
                return (kind, phrase[len(prefix) :])
        match = re.fullmatch(rf"the average number of {t.per_item} per (.+?) in (.+)", phrase)
        if match:
            return ("average", match.group(1), match.group(2))
        match = re.fullmatch(r"the number of (.+?) in (.+)", phrase)
        assert match, f"unparsed quantity {phrase!r}"
        assert match.group(1) in t.items
        return ("count", match.group(1), match.group(2))

    def expression(self, text):
        """-> (function of the operand values, operands, operation count)."""
        if text.isdigit():
            return (lambda: int(text), [], 1)
        match = re.fullmatch(r"(\d+) (times|plus) (.+)", text)
        if match:
            factor = int(match.group(1))
            fn, operands, cost = self.expression(match.group(3))
            if match.group(2) == "times":
                return (lambda: factor * fn(), operands, cost + 1)
            return (lambda: factor + fn(), operands, cost + 1)
        if text.startswith("the sum of "):
            parts = re.split(r",? and (?=the )|, (?=the )", text[len("the sum of ") :])
            operands = [self.quantity(p) for p in parts]
            assert len(operands) >= 2
            return (lambda: sum(self.value(q) for q in operands), operands, len(operands) - 1)
        if text.startswith("the difference between "):
            a, b = (
                self.quantity(p) for p in re.split(r" and (?=the )", text[len("the difference between ") :])
            )
            return (lambda: self.value(a) - self.value(b), [a, b], 1)
        q = self.quantity(text)
        return (lambda: self.value(q), [q], 1)

    def counted_items(self, loc):
        return [q[1] for q in self.stated if q[0] == "count" and q[2] == loc]

    def dependencies(self, q):
        if q[0] == "total":
            return [("count", item, q[1]) for item in self.counted_items(q[1])]
        if q[0] == "child_total":
            items = self.counted_items(q[1])
            averaged = [x[1] for x in self.stated if x[0] == "average" and x[2] == q[1]]
            assert sorted(items) == sorted(averaged), "child total over incomplete pairs"
            return [d for item in items for d in (("count", item, q[1]), ("average", item, q[1]))]
        assert q in self.stated, f"referenced but never stated: {q}"
        return self.stated[q][1]

    def value(self, q, visiting=()):
        if q in self.values:
            return self.values[q]
        assert q not in visiting, "cycle"
        for dep in self.dependencies(q):
            self.value(dep, (*visiting, q))
        if q[0] == "total":
            result = sum(self.value(d) for d in self.dependencies(q))
        elif q[0] == "child_total":
            deps = self.dependencies(q)
            result = sum(self.value(deps[i]) * self.value(deps[i + 1]) for i in range(0, len(deps), 2))
        else:
            result = self.stated[q][0]()
        assert result >= 0
        self.values[q] = result
        return result

    def op_count(self, q):
        seen, stack = set(), [q]
        while stack:
            x = stack.pop()
            if x not in seen:
                seen.add(x)
                stack.extend(self.dependencies(x))
        total = 0
        for x in seen:
            if x[0] == "total":
                total += max(1, len(self.dependencies(x)) - 1)
            elif x[0] == "child_total":
                total += len(self.dependencies(x)) - 1  # m products + (m - 1) additions
            else:
                total += self.stated[x][2]
        return total

    def question(self, text):
        match = re.fullmatch(r"How many (.+) does (.+) have\?", text)
        if match:
            return ("count", match.group(1), match.group(2))
        match = re.fullmatch(r"What is (.+)\?", text)
        assert match, f"unparsed question {text!r}"
        return self.quantity(match.group(1))


@settings(max_examples=25, deadline=None)
@given(
    subset=st.sampled_from(["medium", "hard"]),
    op=st.integers(1, 40),
    template=st.sampled_from(sorted(TEMPLATES)),
    context_tokens=st.sampled_from([0, 0, 800]),
    seed=st.integers(0, 10**6),
)
def test_realistic_answers_from_the_text(subset, op, template, context_tokens, seed):
    (row,) = generate_gsm_infinite(
        subset, op, 1, seed=seed, context_tokens=context_tokens, templates=(template,)
    )
    reader = RealisticReader(template, row["problem"])
    target = reader.question(row["question"])
    assert reader.value(target) == gold_realistic_answer(row["solution"])
    assert reader.op_count(target) == op == row["op"]
    if subset == "medium":
        assert all(q[0] == "count" for q in reader.stated)
    assert row["template"] == template and row["mode"] == "normalforward"
    assert row["d"] == (3 if subset == "hard" else 2)
    assert row["length"] == ("zero_context" if context_tokens == 0 else str(context_tokens))
    # Distractors are added to the same core (same seed, no budget) until the budget is met.
    (bare,) = generate_gsm_infinite(subset, op, 1, seed=seed, templates=(template,))
    sentences, core = (set(re.split(r"(?<=\.) ", r["problem"])) for r in (row, bare))
    assert core <= sentences and bare["question"] == row["question"]
    tokens, core_tokens = approximate_token_count(row["problem"]), approximate_token_count(bare["problem"])
    if core_tokens >= context_tokens:
        assert sentences == core
    else:
        assert context_tokens <= tokens < context_tokens + 150
    assert score_realistic(row["solution"], row["solution"])


def test_paper_setting_and_token_counter():
    rows = generate_gsm_infinite("medium", 8, 3, seed=1, context_tokens=2500)
    assert all(2500 <= approximate_token_count(r["problem"]) < 2650 for r in rows)
    by_chars = generate_gsm_infinite("medium", 3, 2, seed=1, context_tokens=4000, count_tokens=len)
    assert all(4000 <= len(r["problem"]) < 4400 for r in by_chars)
    paper = GSMInfiniteConfig.paper()
    assert paper.ops == tuple(range(1, 9)) and paper.context_tokens == (2000, 3300)
    assert GSMInfiniteConfig(context_tokens="8k").context_tokens == 8000


def test_budget_beyond_the_template_is_an_error():
    with pytest.raises(ValueError, match="more than the 'movie_festival_awards' template can fill"):
        generate_gsm_infinite("medium", 2, 1, context_tokens=500_000, templates=("movie_festival_awards",))


def test_generation_is_deterministic_per_seed():
    a = generate_gsm_infinite("hard", 6, 3, seed=5, context_tokens=300)
    assert a == generate_gsm_infinite("hard", 6, 3, seed=5, context_tokens=300)
    assert a != generate_gsm_infinite("hard", 6, 3, seed=6, context_tokens=300)
    assert [r["id"] for r in a] == [0, 1, 2]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"subset": "easy"}, "unknown GSM-Infinite subset"),
        ({"subset": "medium", "ops": (0,)}, "op count"),
        ({"subset": "hard", "ops": (41,)}, "op count"),
        ({"subset": "symbolic", "ops": (0,)}, "op count"),
        ({"subset": "medium", "ops": ("3",)}, "op count"),
        ({"subset": "medium", "ops": ()}, "at least one op"),
        ({"templates": ("space_opera",)}, "unknown templates"),
        ({"context_tokens": -5}, "non-negative"),
        ({"context_tokens": "lots"}, "cannot read context length"),
        ({"context_tokens": (3000, 2000)}, "low <= high"),
    ],
)
def test_bad_generation_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GSMInfiniteConfig(**kwargs)


# ---------------------------------------------------------------------------------------------
# Scorers on hand-written outputs.

GOLD = "Define adult owl in Pine Ridge as B; so B = 2. Define total as f; so f = 6 * B = 42. Answer: 42."


@pytest.mark.parametrize(
    "output, expected",
    [
        ("Answer: 42.", 42),
        ("Step 1 ... so the total is 42. Answer: 42", 42),
        ("ANSWER: 41.", 41),
        ("The answer is \\boxed{42}", 42),
        ("The answer is \x08oxed{42}", 42),  # "\b" read as a backspace
        ("Answer: 42\nDone", 42),  # no "." after it: the "answer: ... \n" keyword reads it
        ("So the number is 42", 42),  # the official "is " keyword
        ("Answer: forty-two.", None),  # malformed
        ("42", None),  # missing "Answer:"
        ("I cannot tell", None),
    ],
)
def test_realistic_extraction(output, expected):
    assert extract_realistic_answer(output) == expected
    assert score_realistic(output, GOLD) == (expected == 42)


def test_gold_answer_parsing():
    assert gold_realistic_answer(GOLD) == 42
    with pytest.raises(ValueError, match="no 'Answer: ' marker"):
        gold_realistic_answer("so x = 3.")


@pytest.mark.parametrize(
    "output, gold, right",
    [
        ("Now we have finished this problem. ANSWER:\nV000002, V000001\n", ["V000001", "V000002"], True),
        ("V000003 = 4; V000001 = 4; ... Answer: V000001 and V000002.", ["V000001", "V000002"], True),
        ("Answer: V000001", ["V000001", "V000002"], False),  # wrong: a subset
        ("Answer: V000001, V000002, V000009", ["V000001", "V000002"], False),  # wrong: extra
        ("Answer: none of them.", [], True),
        ("Answer: None", ["V000001"], False),
        ("I don't know", [], False),  # malformed: neither names nor "none"
        ("<think>V000007 maybe</think>The variables are V000001 and V000002.", ["V000001", "V000002"], True),
    ],
)
def test_symbolic_scoring(output, gold, right):
    assert score_symbolic(output, gold) == right


def test_symbolic_extraction_cases():
    assert extract_symbolic_answer("answer: none") == frozenset()
    assert extract_symbolic_answer("no idea") is None
    assert extract_symbolic_answer("Answer: V12, V3") == {"V12", "V3"}


def test_accuracy_by_op_and_leaderboard():
    assert accuracy_by_op([2, 2, 3, 3, 3], [True, False, True, True, False]) == {2: 0.5, 3: 2 / 3}
    # Op 1 is not counted; the sum stops at op 4 (below 5%) and ignores op 5 after it.
    assert leaderboard_score({1: 1.0, 2: 0.9, 3: 0.5, 4: 0.04, 5: 0.6}) == pytest.approx(1.4)
    assert leaderboard_score({3: 0.5, 2: 0.9}) == pytest.approx(1.4)  # order of the mapping does not matter
    assert leaderboard_score({2: 0.01, 3: 0.9}) == 0.0
    rows = [
        {"op": 2, "solution": "Answer: 3."},
        {"op": 2, "solution": "Answer: 4."},
        {"op": 3, "solution": "Answer: 5."},
        {"op": 1, "answer_list": ["V000001"], "solution": "", "answer_q": 1},
    ]
    result = score_gsm_infinite(["Answer: 3.", "Answer: 5.", "answer: 5", "Answer: V000001"], rows)
    assert result["correct"] == [True, False, True, True]
    assert result["accuracy_by_op"] == {1: 1.0, 2: 0.5, 3: 1.0} and result["count_by_op"] == {
        1: 1,
        2: 2,
        3: 1,
    }
    assert result["leaderboard_score"] == pytest.approx(1.5)
    with pytest.raises(ValueError, match="differ in length"):
        score_gsm_infinite(["Answer: 3."], rows)


# ---------------------------------------------------------------------------------------------
# The loader, on small Hub-format files written here.


def _write_parquet(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def test_loader_reads_hub_layouts(tmp_path):
    medium = {op: generate_gsm_infinite("medium", op, 3, seed=op) for op in (2, 3, 4)}
    hub = tmp_path / "gsm_infinite_medium_0"
    for op, rows in medium.items():
        _write_parquet(hub / "data" / f"ops_{op}-00000-of-00001.parquet", rows)
    data = load_gsm_infinite(hub)
    assert len(data) == 9 and sorted(set(data["op"])) == [2, 3, 4]
    assert data.to_list()[:3] == medium[2]
    only = load_gsm_infinite(hub, ops=[3], subset="medium")
    assert only.to_list() == medium[3]
    # One parquet file passed directly.
    assert load_gsm_infinite(hub / "data" / "ops_4-00000-of-00001.parquet").to_list() == medium[4]
    # JSON lines named like the public generator's output, without the op field.
    jsonl = tmp_path / "igsm" / "igsm_op5_ip20_force_True_0.jsonl"
    jsonl.parent.mkdir()
    rows5 = generate_gsm_infinite("hard", 5, 2, seed=0)
    jsonl.write_text("\n".join(json.dumps({k: v for k, v in r.items() if k != "op"}) for r in rows5) + "\n")
    assert load_gsm_infinite(jsonl)["op"] == [5, 5]
    # A JSON list of symbolic rows (nested messages, list answers).
    symbolic = generate_gsm_infinite("symbolic", 4, 3, seed=2)
    listed = tmp_path / "symbolic.json"
    listed.write_text(json.dumps(symbolic))
    loaded = load_gsm_infinite(listed, subset="symbolic")
    assert loaded.to_list() == symbolic
    assert score_gsm_infinite([r["solution"] for r in loaded], loaded.to_list())["accuracy"] == 1.0


def test_loader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_gsm_infinite(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .parquet"):
        load_gsm_infinite(tmp_path / "empty")
    unrelated = tmp_path / "unrelated.jsonl"
    unrelated.write_text(json.dumps({"text": "hello", "label": 1}) + "\n")
    with pytest.raises(
        ValueError, match=r"none of the expected GSM-Infinite fields.*found fields: \['label', 'text'\]"
    ):
        load_gsm_infinite(unrelated)
    partial = tmp_path / "partial.parquet"
    _write_parquet(partial, [{"problem": "p", "question": "q", "op": 2}])
    with pytest.raises(
        ValueError, match=r"missing GSM-Infinite fields \['solution'\].*found fields: \['op', 'problem'"
    ):
        load_gsm_infinite(partial)
    no_answers = tmp_path / "symbolic_partial.jsonl"
    no_answers.write_text(json.dumps({"problem": "p", "question": "q", "solution": "s", "op": 1}) + "\n")
    with pytest.raises(ValueError, match=r"missing GSM-Infinite fields \['answer_q', 'answer_list'\]"):
        load_gsm_infinite(no_answers, subset="symbolic")
    good = tmp_path / "good.parquet"
    _write_parquet(good, generate_gsm_infinite("medium", 2, 2))
    with pytest.raises(ValueError, match=r"op counts \[7\] are not in .*available op counts: \[2\]"):
        load_gsm_infinite(good, ops=[2, 7])
    with pytest.raises(ValueError, match="op counts must be positive ints"):
        load_gsm_infinite(good, ops=[0])
    with pytest.raises(ValueError, match="unknown GSM-Infinite subset"):
        load_gsm_infinite(good, subset="realistic")
    wrong_suffix = tmp_path / "data.csv"
    wrong_suffix.write_text("a,b\n")
    with pytest.raises(ValueError, match="suffix '.csv'"):
        load_gsm_infinite(wrong_suffix)


# ---------------------------------------------------------------------------------------------
# Prompts: the official chat format and the sleep layout with a model tokenizer.


@pytest.fixture(scope="module")
def bpe_tokenizer():
    texts = [r["problem"] + " " + r["question"] for r in generate_gsm_infinite("medium", 4, 20, seed=3)]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(texts + ["Answer: 0123456789. Question: Problem: V"], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def test_official_messages():
    (row,) = generate_gsm_infinite("hard", 3, 1, seed=0)
    system, instruction, body = official_messages(row)
    assert system == {"role": "system", "content": "You are a helpful assistant."}
    assert instruction["content"].endswith("'Answer: xxx', where xxx is the number you calculated.")
    assert body["content"] == f"Problem: {row['problem']} Question: {row['question']} Solution: "
    first = official_messages(row, question_position="before")[2]["content"]
    assert first.startswith(f"Question: {row['question']} Problem: ")
    (sym,) = generate_gsm_infinite("symbolic", 3, 1, seed=0)
    (turn,) = official_messages(sym)
    assert turn["content"] == sym["messages"][0]["content"]
    (before,) = official_messages(sym, question_position="before")
    assert before["content"].startswith(sym["question"]) and before["content"].endswith("</context>")
    with pytest.raises(ValueError, match="question_position"):
        official_messages(row, question_position="middle")


def test_sleep_layout(bpe_tokenizer):
    tok = bpe_tokenizer
    (row,) = generate_gsm_infinite("medium", 3, 1, seed=4, context_tokens=200)
    answer = gold_realistic_answer(row["solution"])
    feats = sleep_features(row, tok)
    ids, mask, start = feats["input_ids"], feats["loss_mask"], feats["target_start"]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.decode(ids[1:start]).startswith(f"Question: {row['question']}\nProblem: ")
    assert tok.decode(ids[start:]) == f"Answer: {answer}.</s>"
    targets = [i for i, m in zip(ids, mask, strict=True) if m]
    assert tok.decode(targets) == f" {answer}.</s>" and not any(mask[: start + 1])
    after = sleep_features(row, tok, question_position="after")
    assert tok.decode(after["input_ids"][after["target_start"] :]).startswith(
        f"Question: {row['question']}\nAnswer:"
    )
    assert sleep_features(row, tok, answer_chunk="shared")["target_start"] == 0
    prompt = sleep_features(row, tok, include_answer=False)
    assert tok.decode(prompt["input_ids"][prompt["target_start"] :]) == "Answer:" and not any(
        prompt["loss_mask"]
    )
    (sym,) = generate_gsm_infinite("symbolic", 4, 1, seed=0)
    context, cue, text = sleep_texts(sym)
    assert context.startswith(f"Question: Which variables (if any) are equal to {sym['answer_q']}?")
    assert text == " " + ", ".join(sorted(sym["answer_list"])) + "." and score_symbolic(
        "Answer:" + text, sym["answer_list"]
    )
    mapped = tokenize_for_sleep(Dataset.from_list([row, row]), tok, question_position="after")
    assert mapped[1]["input_ids"] == after["input_ids"] and mapped[1]["target_start"] == after["target_start"]
    assert mapped[0]["solution"] == row["solution"]
    with pytest.raises(ValueError, match="PreTrainedTokenizerBase"):
        sleep_features(row, "gpt2")
    with pytest.raises(ValueError, match="answer_chunk"):
        sleep_features(row, tok, answer_chunk="both")
