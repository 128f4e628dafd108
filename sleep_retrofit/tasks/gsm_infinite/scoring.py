"""GSM-Infinite scoring: the official rules, plus accuracy per op count and the leaderboard score.

Realistic (medium, hard), as in the public evaluation script: the gold answer is the integer
between "Answer: " and the next "." in the solution. The model output is lower-cased (and a
character followed by a backspace becomes "b", repairing "\\boxed" read as "<BS>oxed"), then
the keywords below are tried in order; the first whose text up to its end marker parses as
an integer gives the prediction. "oxed{" and "is " use their last occurrence, the others their
first; a missing end marker means "to the end of the output", and the `\\text{answer: } `
keyword reads the digits that follow it. No parseable keyword: wrong.

Symbolic: the official evaluation asks an LLM to list the variables the output names as
equal to the value, then requires the set of V-names to equal `answer_list`. We replace the
LLM with a rule (a documented deviation): take the text after the last "answer" (any case;
the whole output if there is none) -- after the last "</think>" if present -- and collect
the names matching V<digits>; no names but the word "none" means the empty set; neither is
malformed (wrong).

Leaderboard score: the sum of accuracies over op counts in increasing order from 2, stopping
at the first op count whose accuracy is below 5% (that one is not added).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# (keyword, end marker) in the official order; None = read digits.
REALISTIC_KEYWORDS: tuple[tuple[str, str | None], ...] = (
    ("answer: ", "."),
    ("solution: ", "."),
    ("oxed{", "}"),
    ("**answer:** ", "."),
    ("**answer: ", "**"),
    ("final answer: answer: ", "."),
    ("\nanswer: ", "."),
    ("\\text{answer: } ", None),
    ("is ", "."),
    ("answer: ", "\n"),
)
_LAST_OCCURRENCE = ("oxed{", "is ")
_VARIABLE = re.compile(r"\bV\d+\b")
LEADERBOARD_THRESHOLD = 0.05
LEADERBOARD_START_OP = 2


def _as_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def gold_realistic_answer(solution: str) -> int:
    """The integer after "Answer: " (up to the next ".") in a gold solution."""
    start = solution.find("Answer: ")
    if start == -1:
        raise ValueError(f"solution has no 'Answer: ' marker: ...{solution[-80:]!r}")
    begin = start + len("Answer: ")
    stop = solution.find(".", begin)
    value = _as_int(solution[begin : stop if stop != -1 else len(solution)])
    if value is None:
        raise ValueError(f"solution's answer is not an integer: {solution[begin : begin + 40]!r}")
    return value


def extract_realistic_answer(output: str) -> int | None:
    """The integer a model output gives as its answer under the official keyword rules."""
    text = re.sub(".\x08", "b", output).lower()
    for keyword, end in REALISTIC_KEYWORDS:
        start = text.rfind(keyword) if keyword in _LAST_OCCURRENCE else text.find(keyword)
        if start == -1:
            continue
        begin = start + len(keyword)
        if end is None:
            stop = begin
            while stop < len(text) and text[stop].isdigit():
                stop += 1
        else:
            stop = text.find(end, begin)
            if stop == -1:
                stop = len(text)
        value = _as_int(text[begin:stop])
        if value is not None:
            return value
    return None


def score_realistic(output: str, solution: str) -> bool:
    predicted = extract_realistic_answer(output)
    return predicted is not None and predicted == gold_realistic_answer(solution)


def extract_symbolic_answer(output: str) -> frozenset[str] | None:
    """The set of variables a model output gives as its answer (see the module docstring);
    None when the output names no variable and does not say "none"."""
    text = output.split("</think>")[-1]
    marker = text.lower().rfind("answer")
    segment = text[marker + len("answer") :] if marker != -1 else text
    names = _VARIABLE.findall(segment)
    if names:
        return frozenset(names)
    if re.search(r"\bnone\b", segment, flags=re.IGNORECASE):
        return frozenset()
    return None


def score_symbolic(output: str, answer_list: Iterable[str]) -> bool:
    predicted = extract_symbolic_answer(output)
    return predicted is not None and predicted == frozenset(answer_list)


def score_row(output: str, row: Mapping[str, Any]) -> bool:
    """Score one output against one Hub-format row (symbolic if it has `answer_list`)."""
    if "answer_list" in row and row["answer_list"] is not None:
        return score_symbolic(output, row["answer_list"])
    return score_realistic(output, row["solution"])


def accuracy_by_op(ops: Sequence[int], correct: Sequence[bool]) -> dict[int, float]:
    """Mean correctness per op count, keys in increasing order."""
    if len(ops) != len(correct):
        raise ValueError(f"ops ({len(ops)}) and correct ({len(correct)}) differ in length")
    right: dict[int, int] = {}
    total: dict[int, int] = {}
    for op, ok in zip(ops, correct, strict=True):
        total[int(op)] = total.get(int(op), 0) + 1
        right[int(op)] = right.get(int(op), 0) + int(bool(ok))
    return {op: right[op] / total[op] for op in sorted(total)}


def leaderboard_score(
    accuracies: Mapping[int, float],
    *,
    threshold: float = LEADERBOARD_THRESHOLD,
    start_op: int = LEADERBOARD_START_OP,
) -> float:
    """Sum of accuracies over op counts >= start_op, in increasing order, until one falls
    below `threshold`."""
    score = 0.0
    for op in sorted(accuracies):
        if op < start_op:
            continue
        if accuracies[op] < threshold:
            break
        score += accuracies[op]
    return score


def score_gsm_infinite(outputs: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Score model outputs against rows: accuracy, accuracy and count per op, leaderboard score."""
    if len(outputs) != len(rows):
        raise ValueError(f"outputs ({len(outputs)}) and rows ({len(rows)}) differ in length")
    if not rows:
        raise ValueError("no rows to score")
    correct = [score_row(output, row) for output, row in zip(outputs, rows, strict=True)]
    ops = [int(row["op"]) for row in rows]
    per_op = accuracy_by_op(ops, correct)
    counts: dict[int, int] = {}
    for op in ops:
        counts[op] = counts.get(op, 0) + 1
    return {
        "count": len(rows),
        "accuracy": sum(correct) / len(correct),
        "accuracy_by_op": per_op,
        "count_by_op": {op: counts[op] for op in sorted(counts)},
        "leaderboard_score": leaderboard_score(per_op),
        "correct": correct,
    }
