"""Word-level tokenizers for the synthetic tasks (Rule 110, Depo).

Synthetic examples are sequences of symbols ("s0_1", "hop4", "?"); their text is the symbols
joined by single spaces, and the tokenizer maps every whitespace-separated symbol to exactly
one id. It is a real `transformers.PreTrainedTokenizerFast` backed by a `tokenizers`
WordLevel model, so it saves with `save_pretrained` and loads with `AutoTokenizer`.

Ids are fixed by construction: the special tokens come first, in the order of
`SPECIAL_TOKENS`, then the task's symbols in the order the task lists them. A task therefore
computes `input_ids` without building a tokenizer (`WordVocabulary.ids`), and the tokenizer
it builds agrees with those ids (a test checks this).

GSM-Infinite is natural language: it uses the model's own tokenizer, never this one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

# Order matters: it fixes the ids 0..3.
SPECIAL_TOKENS: dict[str, str] = {
    "pad_token": "<pad>",
    "unk_token": "<unk>",
    "bos_token": "<bos>",
    "eos_token": "<eos>",
}


class WordVocabulary:
    """The id of every symbol of a synthetic task: special tokens first, then `symbols`."""

    def __init__(self, symbols: Iterable[str]):
        self.tokens: list[str] = list(SPECIAL_TOKENS.values())
        for symbol in symbols:
            if not isinstance(symbol, str) or not symbol or any(ch.isspace() for ch in symbol):
                raise ValueError(
                    f"vocabulary symbols must be non-empty strings without whitespace, got {symbol!r}"
                )
            if symbol in self.tokens:
                raise ValueError(
                    f"vocabulary symbol {symbol!r} appears twice (or clashes with a special token)"
                )
            self.tokens.append(symbol)
        self._index = {token: i for i, token in enumerate(self.tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: str) -> bool:
        return token in self._index

    @property
    def pad_token_id(self) -> int:
        return self._index[SPECIAL_TOKENS["pad_token"]]

    def ids(self, tokens: Sequence[str]) -> list[int]:
        """Map symbols to ids; an unknown symbol is a ValueError (a generator bug, not data)."""
        try:
            return [self._index[token] for token in tokens]
        except KeyError as err:
            raise ValueError(f"symbol {err.args[0]!r} is not in this task's vocabulary") from None

    def tokenizer(self, *, padding_side: str = "left") -> PreTrainedTokenizerFast:
        """Build the matching tokenizer (see `build_word_tokenizer`)."""
        return build_word_tokenizer(self.tokens[len(SPECIAL_TOKENS) :], padding_side=padding_side)


def build_word_tokenizer(symbols: Sequence[str], *, padding_side: str = "left") -> PreTrainedTokenizerFast:
    """A word-level tokenizer over `symbols`: text is split on whitespace and every piece is
    one token (unknown pieces become `<unk>`). Special tokens `<pad>`, `<unk>`, `<bos>`,
    `<eos>` take ids 0-3; no special tokens are added when encoding. Left padding by default,
    which is what the sleep collator and batched generation want."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    vocabulary = WordVocabulary(symbols)
    backend = Tokenizer(
        models.WordLevel(
            {token: i for i, token in enumerate(vocabulary.tokens)}, unk_token=SPECIAL_TOKENS["unk_token"]
        )
    )
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # No decoder: the tokenizers default joins tokens with single spaces, i.e. the task text.
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        padding_side=padding_side,
        model_max_length=1 << 30,
        **SPECIAL_TOKENS,
    )
