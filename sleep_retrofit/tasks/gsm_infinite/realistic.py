"""GSM-Infinite, realistic-style subsets (medium, hard): our own generator.

Written from the public description of the benchmark (no generator code is reused): a
dependency DAG of quantities, verbalised with templates, where `op` is the number of
arithmetic operations in the solution graph; problems add unnecessary statements, and long
contexts add distractor statements until a token budget is reached.

Quantities (one "entity level" per kind; medium uses two levels, hard three):
    count(item, loc)        "the number of adult fox in Pine Ridge"                (stated)
    total(loc)              "the total number of adult animals in Pine Ridge"      (implicit)
  hard only:
    average(item, loc)      "the average number of newborn children per adult fox in Pine Ridge" (stated)
    child_total(loc)        "the total number of newborn animal children in Pine Ridge"       (implicit)

A stated quantity has one statement "<quantity> equals <expression>." where the expression is
a constant (1..4), another quantity, "the sum of A, B, and C", "the difference between A and
B", or "c times <quantity or sum>" / "c plus <quantity or sum>". Implicit quantities are never
stated: total(loc) is the sum of every count stated for loc; child_total(loc) is the sum over
the items of loc of count * average (used only where every counted item has an average and
vice versa). Once an implicit quantity of a location is referenced, the location is closed:
no later statement mentions it, so the total means the same thing to the generator and to a
reader of the finished text. Values stay non-negative (a difference is always written larger
minus smaller) and at most `MAX_VALUE`.

Operation count (the solution's arithmetic, as in the public solutions "Define x as B; S = J
= 1; so B = 2 * S"): a constant or a copy costs 1, a sum of m terms m - 1, a difference 1, a
"times"/"plus" wrapper 1 more; total(loc) over m counts costs max(1, m - 1), child_total over
m items 2m - 1 (m products, m - 1 additions). `op` of a problem = the summed cost of the
question's ancestors (itself included). Only `normalforward` problems are generated
(`forwardreverse` rows load and score, but are not produced here).
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ...checks import is_int

MAX_REALISTIC_OPS = 40
MAX_VALUE = 10_000
CONSTANTS = (1, 2, 3, 4)
FACTORS = (2, 3, 4)

Quantity = tuple[
    str, ...
]  # ("count", item, loc) | ("average", item, loc) | ("total", loc) | ("child_total", loc)
STATED_KINDS = ("count", "average")
IMPLICIT_KINDS = ("total", "child_total")


@dataclass(frozen=True)
class RealisticTemplate:
    """Names for one story world. A location is `first + joiner + second`."""

    name: str
    places_first: tuple[str, ...]
    places_second: tuple[str, ...]
    place_joiner: str
    items: tuple[str, ...]
    item_total: str  # "adult animals": "the total number of adult animals in X"
    per_item: str  # "newborn children": "the average number of newborn children per adult fox in X"
    per_item_total: str  # "newborn animal children": "the total number of newborn animal children in X"
    thing: str  # what the items are, for the instruction ("type of animal")

    def locations(self) -> list[str]:
        return [f"{a}{self.place_joiner}{b}" for a in self.places_first for b in self.places_second]

    def phrase(self, q: Quantity) -> str:
        """The quantity as it appears inside a sentence."""
        kind = q[0]
        if kind == "count":
            return f"the number of {q[1]} in {q[2]}"
        if kind == "average":
            return f"the average number of {self.per_item} per {q[1]} in {q[2]}"
        if kind == "total":
            return f"the total number of {self.item_total} in {q[1]}"
        if kind == "child_total":
            return f"the total number of {self.per_item_total} in {q[1]}"
        raise ValueError(f"unknown quantity kind {kind!r}")

    def short_name(self, q: Quantity) -> str:
        """The quantity as the solutions name it ("adult fox in Pine Ridge")."""
        if q[0] == "count":
            return f"{q[1]} in {q[2]}"
        return self.phrase(q)[len("the ") :]

    def question(self, q: Quantity) -> str:
        if q[0] == "count":
            return f"How many {q[1]} does {q[2]} have?"
        return f"What is {self.phrase(q)}?"

    def instruction(self) -> str:
        """The user-turn instruction (our wording of the public template's rules)."""
        return (
            "Answer the question below. "
            f"Note: the total number of {self.item_total} in a location is the sum of every {self.thing} "
            "ever mentioned for that location in the problem. "
            f"IMPORTANT: if a {self.thing} is never mentioned for a location in this problem, assume it does "
            "not exist there (its number is 0); quantities from previous problems do not apply. "
            f"The total number of {self.per_item_total} in a location is the sum, over every {self.thing} "
            f"mentioned for that location, of its number times its average number of {self.per_item} there. "
            "Each question is self-contained and independent of the others. "
            "Final answer needs to be presented in the format 'Answer: xxx', "
            "where xxx is the number you calculated."
        )


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split("|"))


# Our own story worlds. Names must not contain " in ", " and ", "," or "." (the sentences
# are read back by splitting on them).
TEMPLATES: dict[str, RealisticTemplate] = {
    t.name: t
    for t in (
        RealisticTemplate(
            name="crazy_zootopia",
            places_first=_names(
                "Amber|Birch|Cedar|Copper|Dusk|Elm|Fern|Granite|Hazel|Iron|Juniper|Lantern|Maple|Misty|North|"
                "Oak|Pine|Quartz|Raven|Silver|Stone|Willow"
            ),
            places_second=_names(
                "Creek|Forest|Glade|Hollow|Meadow|Ridge|Valley|Marsh|Grove|Canyon|Reserve|Zoo"
            ),
            place_joiner=" ",
            items=_names(
                "adult bear|adult wolf|adult deer|adult fox|adult otter|adult badger|adult eagle|adult owl|"
                "adult heron|adult crow|adult lynx|adult hare"
            ),
            item_total="adult animals",
            per_item="newborn children",
            per_item_total="newborn animal children",
            thing="type of adult animal",
        ),
        RealisticTemplate(
            name="teachers_in_school",
            places_first=_names(
                "Ash|Bright|Clear|Dale|East|Fair|Glen|High|Lake|Mill|New|North|Rose|Sun|West|Wood|Oak|Stone|"
                "Green|Silver|Red|Elm|Kings|Mar"
            ),
            places_second=_names("ford|haven|field|bury|ton|view|port|wick|stead|mouth"),
            place_joiner="",
            items=_names(
                "elementary school|private middle school|public high school|regional medical school|"
                "culinary school|art school|music academy|technical college|law school|language school"
            ),
            item_total="schools",
            per_item="teachers",
            per_item_total="teachers from all schools",
            thing="type of school",
        ),
        RealisticTemplate(
            name="movie_festival_awards",
            places_first=_names(
                "Aurora|Blue Lagoon|Crimson|Golden Dune|Harbor|Ivory|Lakeside|Midnight|Northwood|Orchid|"
                "Polar|Sunset|Velvet|Willow Bay|Amber Coast|Brightwater|Cobalt|Desert Rose|Emerald|Foxglove|"
                "Glacier|Highland|Iron Bridge|Jasmine|Kestrel|Lunar|Marigold|Nightfall|Opal|Red Canyon"
            ),
            places_second=_names(
                "Film Festival|Movie Festival|Screen Awards|Cinema Week|Film Awards|Picture Show"
            ),
            place_joiner=" ",
            items=_names(
                "upbeat city comedy|solemn period drama|futuristic sci-fi movie|calm road movie|"
                "intense detective thriller|animated family movie|gritty war drama|quiet documentary|"
                "musical romance|haunted house horror"
            ),
            item_total="movies",
            per_item="nominations",
            per_item_total="movie nominations",
            thing="type of movie",
        ),
    )
}


def check_realistic_op(op: Any) -> int:
    if not is_int(op) or not 1 <= op <= MAX_REALISTIC_OPS:
        raise ValueError(f"realistic op count must be an int in [1, {MAX_REALISTIC_OPS}], got {op!r}")
    return op


def approximate_token_count(text: str) -> int:
    """Words and punctuation marks: close to a BPE tokenizer's count for this kind of text.
    Pass your model tokenizer's length function for exact budgets."""
    return len(re.findall(r"\w+|[^\w\s]", text))


@dataclass(frozen=True)
class Expression:
    """The right-hand side of one statement (see the module docstring)."""

    kind: str  # "const" | "ref" | "sum" | "diff"
    operands: tuple[Quantity, ...] = ()
    constant: int = 0
    wrapper: str | None = None  # None | "times" | "plus"
    factor: int = 0

    def cost(self) -> int:
        base = len(self.operands) - 1 if self.kind == "sum" else 1
        return base + (1 if self.wrapper else 0)

    def evaluate(self, values: dict[Quantity, int]) -> int:
        if self.kind == "const":
            inner = self.constant
        elif self.kind == "diff":
            inner = values[self.operands[0]] - values[self.operands[1]]
        else:  # ref, sum
            inner = sum(values[q] for q in self.operands)
        if self.wrapper == "times":
            return self.factor * inner
        if self.wrapper == "plus":
            return self.factor + inner
        return inner

    def text(self, template: RealisticTemplate) -> str:
        names = [template.phrase(q) for q in self.operands]
        if self.kind == "const":
            inner = str(self.constant)
        elif self.kind == "ref":
            inner = names[0]
        elif self.kind == "diff":
            inner = f"the difference between {names[0]} and {names[1]}"
        elif len(names) == 2:
            inner = f"the sum of {names[0]} and {names[1]}"
        else:
            inner = "the sum of " + ", ".join(names[:-1]) + f", and {names[-1]}"
        if self.wrapper:
            return f"{self.factor} {self.wrapper} {inner}"
        return inner


@dataclass
class ProblemGraph:
    """The generator's bookkeeping: statements in creation order plus closed implicit
    quantities, their values, and each quantity's ancestors (itself included)."""

    template: RealisticTemplate
    hard: bool
    statements: dict[Quantity, Expression] = field(default_factory=dict)
    implicit: dict[Quantity, tuple[Quantity, ...]] = field(default_factory=dict)  # closed implicit -> deps
    values: dict[Quantity, int] = field(default_factory=dict)
    order: list[Quantity] = field(default_factory=list)  # topological
    counted: dict[str, list[str]] = field(default_factory=dict)  # loc -> items with a count statement
    averaged: dict[str, list[str]] = field(default_factory=dict)  # loc -> items with an average statement
    closed: dict[str, None] = field(default_factory=dict)  # locations no statement may mention any more
    ancestors: dict[Quantity, frozenset[Quantity]] = field(default_factory=dict)
    unused: dict[Quantity, None] = field(default_factory=dict)  # defined, not yet an operand

    # -- implicit quantities --------------------------------------------------------------
    def implicit_deps(self, q: Quantity) -> tuple[Quantity, ...]:
        if q in self.implicit:
            return self.implicit[q]
        loc = q[1]
        items = self.counted.get(loc, [])
        if q[0] == "total":
            return tuple(("count", item, loc) for item in items)
        return tuple(dep for item in items for dep in (("count", item, loc), ("average", item, loc)))

    def implicit_available(self, q: Quantity) -> bool:
        loc = q[1]
        if q in self.implicit:
            return True
        if not self.counted.get(loc):
            return False
        if q[0] == "child_total":
            return self.hard and sorted(self.counted[loc]) == sorted(self.averaged.get(loc, []))
        return True

    def implicit_cost(self, q: Quantity) -> int:
        m = len(self.counted.get(q[1], []))
        return max(1, m - 1) if q[0] == "total" else 2 * m - 1

    def _ancestors_of(self, q: Quantity) -> frozenset[Quantity]:
        if q in self.ancestors:
            return self.ancestors[q]
        # An implicit quantity not yet closed: its ancestors as if it were closed now.
        out: set[Quantity] = {q}
        for dep in self.implicit_deps(q):
            out |= self.ancestors[dep]
        return frozenset(out)

    def current_value(self, q: Quantity) -> int:
        """The value of a defined quantity, or of an implicit one as if it were closed now."""
        if q in self.values:
            return self.values[q]
        deps = self.implicit_deps(q)
        if q[0] == "total":
            return sum(self.values[d] for d in deps)
        return sum(self.values[deps[i]] * self.values[deps[i + 1]] for i in range(0, len(deps), 2))

    def cost_of(self, q: Quantity) -> int:
        return self.implicit_cost(q) if q[0] in IMPLICIT_KINDS else self.statements[q].cost()

    def op_count(self, ancestors: frozenset[Quantity]) -> int:
        return sum(self.cost_of(q) for q in ancestors)

    def close(self, q: Quantity) -> None:
        """Reference an implicit quantity for the first time: fix its value, close its location."""
        if q in self.implicit:
            return
        deps = self.implicit_deps(q)
        self.values[q] = self.current_value(q)
        self.implicit[q] = deps
        self.closed[q[1]] = None
        self.ancestors[q] = self._ancestors_of(q)
        self.order.append(q)
        self.unused[q] = None

    # -- statements -------------------------------------------------------------------------
    def cost_if_added(self, expr: Expression) -> int:
        union: set[Quantity] = set()
        for operand in expr.operands:
            union |= self._ancestors_of(operand)
        # Implicit operands' costs depend only on their (current) location contents.
        return expr.cost() + self.op_count(frozenset(union))

    def add(self, q: Quantity, expr: Expression) -> None:
        for operand in expr.operands:
            if operand[0] in IMPLICIT_KINDS:
                self.close(operand)
            self.unused.pop(operand, None)
        self.statements[q] = expr
        self.values[q] = expr.evaluate(self.values)
        ancestors: set[Quantity] = {q}
        for operand in expr.operands:
            ancestors |= self.ancestors[operand]
        self.ancestors[q] = frozenset(ancestors)
        self.order.append(q)
        self.unused[q] = None
        kind, item, loc = q
        (self.counted if kind == "count" else self.averaged).setdefault(loc, []).append(item)

    def sentence(self, q: Quantity) -> str:
        subject = self.template.phrase(q)
        return f"{subject[0].upper()}{subject[1:]} equals {self.statements[q].text(self.template)}."


def _random_new_quantity(rng: random.Random, graph: ProblemGraph, locations: list[str]) -> Quantity | None:
    open_locations = [loc for loc in locations if loc not in graph.closed]
    if not open_locations:
        return None
    for _ in range(8):
        kind = "average" if graph.hard and rng.random() < 0.5 else "count"
        q = (kind, rng.choice(graph.template.items), rng.choice(open_locations))
        if q not in graph.statements:
            return q
    return None


def _propose(
    rng: random.Random,
    graph: ProblemGraph,
    q: Quantity,
    frontier: Quantity | None,
    protected: Sequence[str],
) -> Expression | None:
    """A random expression for the new quantity `q` over already-defined quantities. Implicit
    quantities of `q`'s own location (a cycle) and of `protected` locations (still being
    filled) are not referenced."""
    loc = q[2]
    pool: list[Quantity] = list(graph.statements) + [r for r in graph.implicit if r[1] != loc]
    for other in graph.counted:
        if other == loc or other in graph.closed or other in protected:
            continue
        for kind in IMPLICIT_KINDS if graph.hard else ("total",):
            if graph.implicit_available((kind, other)):
                pool.append((kind, other))
    if not pool or rng.random() < 0.2:
        return Expression("const", constant=rng.choice(CONSTANTS))
    kind = rng.choices(("ref", "sum", "diff", "times", "plus"), weights=(3, 3, 1.5, 1.5, 1.5))[0]
    in_pool = set(pool)
    unused = [r for r in graph.unused if r in in_pool]
    first = frontier if frontier in in_pool and rng.random() < 0.6 else rng.choice(unused or pool)
    arity = 2 if kind == "diff" else (rng.choice((2, 2, 3)) if kind == "sum" else 1)
    if kind in ("times", "plus") and rng.random() < 0.3:
        arity = 2  # "c times the sum of A and B"
    others = [r for r in pool if r != first]
    if len(others) < arity - 1:
        return None
    operands = (first, *rng.sample(others, arity - 1))
    if kind == "diff":
        return Expression("diff", operands)
    base = "ref" if arity == 1 else "sum"
    if kind in ("times", "plus"):
        factor = rng.choice(FACTORS) if kind == "times" else rng.choice(CONSTANTS)
        return Expression(base, operands, wrapper=kind, factor=factor)
    return Expression(base, operands)


def _try_add(
    rng: random.Random,
    graph: ProblemGraph,
    locations: list[str],
    frontier: Quantity | None,
    max_cost: int | None,
    protected: Sequence[str] = (),
) -> tuple[Quantity, int] | None:
    """Propose one statement in `locations`; add it if its value is valid and its op count
    is at most `max_cost`. Returns (quantity, op count) or None."""
    q = _random_new_quantity(rng, graph, locations)
    if q is None:
        return None
    expr = _propose(rng, graph, q, frontier, list(protected))
    if expr is None:
        return None
    operand_values = {o: graph.current_value(o) for o in expr.operands}
    if expr.kind == "diff" and operand_values[expr.operands[0]] < operand_values[expr.operands[1]]:
        expr = Expression("diff", expr.operands[::-1])  # always larger minus smaller
    if not 0 <= expr.evaluate(operand_values) <= MAX_VALUE:
        return None
    cost = graph.cost_if_added(expr)
    if max_cost is not None and cost > max_cost:
        return None
    graph.add(q, expr)
    return q, cost


@dataclass
class RealisticCore:
    """A finished core problem: every necessary statement plus a few unnecessary ones."""

    template: RealisticTemplate
    hard: bool
    op: int
    graph: ProblemGraph
    target: Quantity
    core_locations: list[str]

    def core_sentences(self) -> list[str]:
        return [self.graph.sentence(q) for q in self.graph.statements]


def draft_realistic(rng: random.Random, op: int, *, hard: bool, template: RealisticTemplate) -> RealisticCore:
    """Build a dependency graph whose question has exactly `op` operations."""
    check_realistic_op(op)
    all_locations = template.locations()
    for _ in range(200):
        graph = ProblemGraph(template, hard)
        core_locations = rng.sample(all_locations, min(len(all_locations), 2 + rng.randint(0, 1) + op // 5))
        target: Quantity | None = None
        frontier: Quantity | None = None
        for _ in range(30 * op + 50):
            added = _try_add(rng, graph, core_locations, frontier, max_cost=op)
            if added is None:
                continue
            frontier, cost = added
            if cost == op:
                target = frontier
                break
            # Sometimes the question is a location's implicit total instead.
            loc = frontier[2]
            for kind in IMPLICIT_KINDS if hard else ("total",):
                candidate = (kind, loc)
                if (
                    loc not in graph.closed
                    and graph.implicit_available(candidate)
                    and graph.op_count(graph._ancestors_of(candidate)) == op
                    and rng.random() < 0.5
                ):
                    graph.close(candidate)
                    target = candidate
                    break
            if target is not None:
                break
        if target is None:
            continue
        # A few unnecessary statements in the core locations (the question's value is fixed:
        # every implicit ancestor is closed).
        for _ in range(rng.randint(1, 3)):
            _try_add(rng, graph, core_locations, None, max_cost=None)
        return RealisticCore(template, hard, op, graph, target, core_locations)
    raise RuntimeError(f"could not build a problem with op={op}; please report this")  # pragma: no cover


def realistic_key(core: RealisticCore) -> str:
    return (
        f"{'hard' if core.hard else 'medium'}/{core.template.name}/"
        + "".join(sorted(core.core_sentences()))
        + (core.template.question(core.target))
    )


def _symbol_names(rng: random.Random) -> Callable[[], str]:
    letters = list(string.ascii_letters)
    rng.shuffle(letters)
    counter = iter(range(1 << 30))

    def next_name() -> str:
        i = next(counter)
        return letters[i] if i < len(letters) else f"{letters[i % len(letters)]}{i // len(letters)}"

    return next_name


def _solution(core: RealisticCore, rng: random.Random) -> str:
    """Step-by-step solution in the public format, ending "Answer: N."."""
    graph, template = core.graph, core.template
    needed = graph.ancestors[core.target]
    new_name = _symbol_names(rng)
    names: dict[Quantity, str] = {}
    steps = []
    for q in graph.order:
        if q not in needed:
            continue
        name = names[q] = new_name()
        value = graph.values[q]
        head = f"Define {template.short_name(q)} as {name}; "
        if q[0] in IMPLICIT_KINDS:
            deps = graph.implicit[q]
            if q[0] == "total":
                terms = [names[d] for d in deps]
                numbers = [str(graph.values[d]) for d in deps]
            else:
                pairs = [(deps[i], deps[i + 1]) for i in range(0, len(deps), 2)]
                terms = [f"{names[c]} * {names[a]}" for c, a in pairs]
                numbers = [f"{graph.values[c]} * {graph.values[a]}" for c, a in pairs]
            if len(terms) == 1 and q[0] == "total":
                steps.append(f"{head}so {name} = {terms[0]} = {value}.")
            else:
                steps.append(f"{head}so {name} = {' + '.join(terms)} = {' + '.join(numbers)} = {value}.")
            continue
        expr = graph.statements[q]
        if expr.kind == "const":
            steps.append(f"{head}so {name} = {value}.")
            continue
        symbol = " - " if expr.kind == "diff" else " + "
        terms = symbol.join(names[o] for o in expr.operands)
        numbers = symbol.join(str(graph.values[o]) for o in expr.operands)
        inner_value = (
            expr.evaluate(graph.values) if not expr.wrapper else (sum(graph.values[o] for o in expr.operands))
        )
        if not expr.wrapper:
            if len(expr.operands) == 1:
                steps.append(f"{head}so {name} = {terms} = {value}.")
            else:
                steps.append(f"{head}so {name} = {terms} = {numbers} = {value}.")
            continue
        temp = new_name()
        if len(expr.operands) == 1:
            inner = f"{temp} = {terms} = {inner_value}; "
        else:
            inner = f"{temp} = {terms} = {numbers} = {inner_value}; "
        op_symbol = "*" if expr.wrapper == "times" else "+"
        steps.append(
            f"{head}{inner}so {name} = {expr.factor} {op_symbol} {temp} = "
            f"{expr.factor} {op_symbol} {inner_value} = {value}."
        )
    steps.append(f"Answer: {graph.values[core.target]}.")
    return " ".join(steps)


def length_label(context_tokens: int) -> str:
    """The Hub's `length` field: "zero_context", or e.g. "8k"."""
    if context_tokens <= 0:
        return "zero_context"
    if context_tokens % 1000 == 0:
        return f"{context_tokens // 1000}k"
    return str(context_tokens)


def finish_realistic(
    core: RealisticCore,
    rng: random.Random,
    *,
    context_tokens: int = 0,
    count_tokens: Callable[[str], int] | None = None,
) -> dict[str, Any]:
    """Add distractor statements (in locations the core does not use) until the problem text
    reaches `context_tokens` tokens, shuffle, and write the row."""
    if not is_int(context_tokens) or context_tokens < 0:
        raise ValueError(f"context_tokens must be a non-negative int, got {context_tokens!r}")
    counter = count_tokens or approximate_token_count
    graph, template = core.graph, core.template
    sentences = {q: graph.sentence(q) for q in graph.statements}
    used = sum(counter(s) for s in sentences.values())
    distractor_locations = [loc for loc in template.locations() if loc not in core.core_locations]
    rng.shuffle(distractor_locations)
    active: list[str] = []  # distractor locations being filled; their totals stay unreferenced
    failures = 0
    while used < context_tokens:
        active = [loc for loc in active if loc not in graph.closed]
        if not active or failures > 20:
            if not distractor_locations:
                raise ValueError(
                    f"context_tokens={context_tokens} is more than the {template.name!r} template can fill "
                    f"(reached about {used} tokens)"
                )
            active = (active + [distractor_locations.pop()])[-3:]
            failures = 0
        added = _try_add(rng, graph, active, None, max_cost=None, protected=active)
        if added is None:
            failures += 1
            continue
        q = added[0]
        sentences[q] = graph.sentence(q)
        used += counter(sentences[q])
    order = list(sentences.values())
    rng.shuffle(order)
    return {
        "problem": " ".join(order),
        "question": template.question(core.target),
        "solution": _solution(core, rng),
        "op": core.op,
        "template": template.name,
        "mode": "normalforward",
        "length": length_label(context_tokens),
        "d": 3 if core.hard else 2,
    }
