"""GSM-Infinite prompts: the official chat format, and the sleep layout used for training and
direct-answer evaluation with any model tokenizer.

Official format (for chat models and chain-of-thought evaluation):
  symbolic:   one user turn, `<context>\\n{problem}\\n</context>\\n\\n{question}`;
  realistic:  system "You are a helpful assistant."; user: the template instruction (ends
              "Final answer needs to be presented in the format 'Answer: xxx' ..."); user:
              "Problem: {problem} Question: {question} Solution: ".
`question_position="before"` puts the question first (the sleep paper's placement).

Sleep layout (the paper's setting: question before the context, no chain of thought):

    question_position="before":  "Question: {q}\\nProblem: {p}\\n" | "Answer:" + " {answer}." <eos>
    question_position="after":   "Problem: {p}\\n" | "Question: {q}\\nAnswer:" + " {answer}." <eos>

"|" marks `target_start`: with `answer_chunk="separate"` (default) everything before it is
context (its own chunks, evicted before the answer), everything after is the target part;
with `answer_chunk="shared"` the whole example is one part (`target_start = 0`), so the
collator right-aligns it and the final chunk also holds the end of the problem. Loss is on
the answer tokens (" {answer}." and eos). The answer is the gold integer for realistic rows
and the variables for symbolic ones ("V000012, V000345", or "none"); the symbolic question is
shortened to "Which variables (if any) are equal to {value}?" (the official question asks for
step-by-step reasoning). Pieces are tokenised separately and concatenated (BPE merges never
cross the boundaries), with the tokenizer's BOS first when it has one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import datasets
from transformers import PreTrainedTokenizerBase

from .realistic import TEMPLATES
from .scoring import gold_realistic_answer
from .symbolic import symbolic_prompt

SYSTEM_PROMPT = "You are a helpful assistant."
GENERIC_INSTRUCTION = (
    "Answer the question below. Each question is self-contained and independent of the others. "
    "Final answer needs to be presented in the format 'Answer: xxx', where xxx is the number you calculated."
)
QUESTION_POSITIONS = ("before", "after")
ANSWER_CHUNKS = ("separate", "shared")


def _check_position(question_position: str) -> None:
    if question_position not in QUESTION_POSITIONS:
        raise ValueError(
            f"question_position must be one of {list(QUESTION_POSITIONS)}, got {question_position!r}"
        )


def is_symbolic(row: Mapping[str, Any]) -> bool:
    return row.get("answer_list") is not None


def official_messages(row: Mapping[str, Any], *, question_position: str = "after") -> list[dict[str, str]]:
    """The chat messages the official evaluation sends for `row`."""
    _check_position(question_position)
    if is_symbolic(row):
        return [
            {
                "role": "user",
                "content": symbolic_prompt(
                    row["problem"], row["question"], question_position=question_position
                ),
            }
        ]
    template = TEMPLATES.get(row.get("template") or "")
    instruction = template.instruction() if template is not None else GENERIC_INSTRUCTION
    if question_position == "after":
        body = f"Problem: {row['problem']} Question: {row['question']} Solution: "
    else:
        body = f"Question: {row['question']} Problem: {row['problem']} Solution: "
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": instruction},
        {"role": "user", "content": body},
    ]


def direct_answer(row: Mapping[str, Any]) -> str:
    """The answer text of the sleep layout (after "Answer:")."""
    if is_symbolic(row):
        names = sorted(row["answer_list"])
        return " " + (", ".join(names) if names else "none") + "."
    return f" {gold_realistic_answer(row['solution'])}."


def sleep_texts(row: Mapping[str, Any], *, question_position: str = "before") -> tuple[str, str, str]:
    """(context, cue, answer) texts of the sleep layout for `row`."""
    _check_position(question_position)
    question = (
        f"Which variables (if any) are equal to {row['answer_q']}?" if is_symbolic(row) else row["question"]
    )
    problem = row["problem"].strip()
    if question_position == "before":
        return f"Question: {question}\nProblem: {problem}\n", "Answer:", direct_answer(row)
    return f"Problem: {problem}\n", f"Question: {question}\nAnswer:", direct_answer(row)


def sleep_features(
    row: Mapping[str, Any],
    tokenizer: PreTrainedTokenizerBase,
    *,
    question_position: str = "before",
    answer_chunk: str = "separate",
    add_bos: bool = True,
    add_eos: bool = True,
    include_answer: bool = True,
) -> dict[str, Any]:
    """Tokenise `row` in the sleep layout: input_ids, loss_mask (1 on answer tokens) and
    target_start, ready for `SleepCollator`. `include_answer=False` stops after the cue
    "Answer:" (a prompt for generation)."""
    if not isinstance(tokenizer, PreTrainedTokenizerBase):
        raise ValueError(
            f"tokenizer must be a transformers PreTrainedTokenizerBase, got {type(tokenizer).__name__}"
        )
    if answer_chunk not in ANSWER_CHUNKS:
        raise ValueError(f"answer_chunk must be one of {list(ANSWER_CHUNKS)}, got {answer_chunk!r}")
    context, cue, answer = sleep_texts(row, question_position=question_position)

    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    prefix = [tokenizer.bos_token_id] if add_bos and tokenizer.bos_token_id is not None else []
    context_ids = prefix + encode(context)
    cue_ids = encode(cue)
    answer_ids = encode(answer) if include_answer else []
    if include_answer and add_eos and tokenizer.eos_token_id is not None:
        answer_ids.append(tokenizer.eos_token_id)
    input_ids = context_ids + cue_ids + answer_ids
    return {
        "input_ids": input_ids,
        "loss_mask": [0] * (len(context_ids) + len(cue_ids)) + [1] * len(answer_ids),
        "target_start": len(context_ids) if answer_chunk == "separate" else 0,
    }


def tokenize_for_sleep(
    dataset: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, **options: Any
) -> datasets.Dataset:
    """`sleep_features` over a dataset of Hub-format rows (adds input_ids, loss_mask,
    target_start; keeps the original columns)."""
    return dataset.map(lambda row: sleep_features(row, tokenizer, **options), desc="tokenising GSM-Infinite")


def with_generation_prompts(
    rows: Sequence[Mapping[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    *,
    question_position: str = "before",
    answer_chunk: str = "separate",
) -> list[dict[str, Any]]:
    """The rows plus their generation prompt in the sleep layout (:func:`sleep_features` without
    the answer: the prompt is cut after the cue "Answer:"), as evaluation generates from them."""
    return [
        {
            **row,
            **sleep_features(
                row,
                tokenizer,
                question_position=question_position,
                answer_chunk=answer_chunk,
                include_answer=False,
            ),
        }
        for row in rows
    ]
