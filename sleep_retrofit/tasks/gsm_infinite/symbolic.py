"""GSM-Infinite, symbolic subset: our own generator, written from the public description.

A problem is a random tree over `op` variables (names V000000..V999999): the root gets
"assign V = c" with c in 0..10, every other variable "assign child = parent", optionally
"+ 1" or "- 1". Long contexts add noise: a second tree over about length * 828 / 9668
fresh variables whose root is never assigned, so none of them can be derived (noise is
assignments, not prose). All statements are shuffled and written "assign ... ." separated
by spaces. The question asks which variables equal a value drawn from the derived values;
the answer is every core variable with that value.

Row fields follow the Hub datasets: problem, question, solution, op, n, length (int), id,
d = 1, answer_q, answer_list, messages (one user turn: the official prompt).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from ...checks import is_int

NUM_VARIABLE_NAMES = 1_000_000
MAX_ROOT_VALUE = 10
MAX_SYMBOLIC_OPS = 10_000
# The public generator's ratio of noise variables to requested context tokens.
NOISE_VARIABLES_PER_TOKEN = 828 / 9668
_EDGE_OPERATIONS = ("", " + 1", " - 1")


def variable_name(index: int) -> str:
    return f"V{index:06d}"


def noise_variable_count(length: int) -> int:
    """Extra (underivable) variables added for a context of `length` tokens."""
    return int(length * NOISE_VARIABLES_PER_TOKEN)


def symbolic_question(value: int) -> str:
    """The official question text (the instruction after the context)."""
    return (
        "The context contains relationships between variables. These relationships are independent "
        "mathematical equations that are all satisfied simultaneously.\n"
        "Using only these relationships, determine which variables (if any) from which values can be "
        f"derived are equal to {value}.\n"
        "Show your step-by-step reasoning and calculations, and then conclude your final answer "
        "in a sentence."
    )


def symbolic_prompt(problem: str, question: str, *, question_position: str = "after") -> str:
    """The official user turn: the context inside <context> tags, then the question (or the
    question first, the sleep paper's placement)."""
    context = f"<context>\n{problem}\n</context>"
    if question_position == "after":
        return f"{context}\n\n{question}"
    if question_position == "before":
        return f"{question}\n\n{context}"
    raise ValueError(f"question_position must be 'before' or 'after', got {question_position!r}")


def check_symbolic_op(op: Any) -> int:
    if not is_int(op) or not 1 <= op <= MAX_SYMBOLIC_OPS:
        raise ValueError(f"symbolic op count must be an int in [1, {MAX_SYMBOLIC_OPS}], got {op!r}")
    return op


@dataclass
class SymbolicCore:
    """The part of a symbolic problem that decides its answer (and its split key)."""

    op: int
    variables: list[str]  # creation order; variables[0] is the root
    parents: list[int]  # parents[i] < i for i >= 1; parents[0] = -1
    operations: list[str]  # per variable: "" (root), "", " + 1" or " - 1"
    root_value: int
    values: list[int]
    query_value: int

    def statements(self) -> list[str]:
        out = [f"assign {self.variables[0]} = {self.root_value}"]
        for i in range(1, len(self.variables)):
            out.append(f"assign {self.variables[i]} = {self.variables[self.parents[i]]}{self.operations[i]}")
        return out

    def answer_list(self) -> list[str]:
        return sorted(
            v for v, value in zip(self.variables, self.values, strict=True) if value == self.query_value
        )


def draft_symbolic(rng: random.Random, op: int) -> SymbolicCore:
    """Draw the core tree of `op` variables and the queried value."""
    check_symbolic_op(op)
    variables = [variable_name(i) for i in rng.sample(range(NUM_VARIABLE_NAMES), op)]
    parents = [-1] + [rng.randrange(i) for i in range(1, op)]
    operations = [""] + [rng.choice(_EDGE_OPERATIONS) for _ in range(1, op)]
    root_value = rng.randint(0, MAX_ROOT_VALUE)
    values = [root_value]
    for i in range(1, op):
        delta = {"": 0, " + 1": 1, " - 1": -1}[operations[i]]
        values.append(values[parents[i]] + delta)
    query_value = rng.choice(values)
    return SymbolicCore(op, variables, parents, operations, root_value, values, query_value)


def symbolic_key(core: SymbolicCore) -> str:
    return "symbolic/" + ";".join(sorted(core.statements())) + f"?{core.query_value}"


def _solution(core: SymbolicCore, statement_order: list[str]) -> str:
    """The official solution layout: direct assignments, a depth-first derivation, the list
    of derived values, then "ANSWER:" and the variables (comma-separated)."""
    children: dict[int, list[int]] = {i: [] for i in range(core.op)}
    position = {statement: k for k, statement in enumerate(statement_order)}
    statements = core.statements()
    for i in sorted(range(1, core.op), key=lambda i: position[statements[i]]):
        children[core.parents[i]].append(i)
    lines = ["First, there are such direct assignment(s):", f"{core.variables[0]} = {core.root_value};", ""]
    lines.append("From these direct assignment(s), we have: ")
    order = [0]
    stack = [(0, iter(children[0]))]
    while stack:
        node, pending = stack[-1]
        child = next(pending, None)
        if child is None:
            lines.append(f"No other variables can be derived from {core.variables[node]};")
            stack.pop()
            continue
        parent, op_text = core.variables[node], core.operations[child]
        evaluated = f"{core.values[node]}{op_text} = " if op_text else ""
        lines.append(f"{core.variables[child]} = {parent}{op_text} = {evaluated}{core.values[child]};")
        order.append(child)
        stack.append((child, iter(children[child])))
    lines += ["", "Now we have done all the calculations. Derived variables are:"]
    lines += [f"{core.variables[i]} = {core.values[i]};" for i in order]
    answer = [core.variables[i] for i in order if core.values[i] == core.query_value]
    lines += ["", "Now we have finished this problem. ANSWER:", ", ".join(answer), ""]
    return "\n".join(lines)


def finish_symbolic(core: SymbolicCore, rng: random.Random, *, length: int = 0) -> dict[str, Any]:
    """Add the noise tree for a `length`-token context, shuffle, and write the row."""
    if not is_int(length) or length < 0:
        raise ValueError(f"length must be a non-negative int (context tokens), got {length!r}")
    num_noise = noise_variable_count(length)
    taken = set(core.variables)
    noise: list[str] = []
    if num_noise:
        for index in rng.sample(range(NUM_VARIABLE_NAMES), min(NUM_VARIABLE_NAMES, num_noise + core.op)):
            name = variable_name(index)
            if name not in taken:
                noise.append(name)
            if len(noise) == num_noise:
                break
    statements = core.statements()
    # The noise root (noise[0]) is never assigned, so no noise variable can be derived.
    for i in range(1, len(noise)):
        statements.append(f"assign {noise[i]} = {noise[rng.randrange(i)]}{rng.choice(_EDGE_OPERATIONS)}")
    rng.shuffle(statements)
    problem = " ".join(f"{statement}." for statement in statements)
    question = symbolic_question(core.query_value)
    return {
        "problem": problem,
        "question": question,
        "solution": _solution(core, statements),
        "op": core.op,
        "n": core.op + len(noise),
        "length": length,
        "d": 1,
        "answer_q": core.query_value,
        "answer_list": core.answer_list(),
        "messages": [{"role": "user", "content": symbolic_prompt(problem, question)}],
    }
