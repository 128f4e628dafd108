"""GSM-Infinite (Zhou et al., 2025): our generator for the symbolic subset and realistic-style
medium/hard problems, a loader for local Hub-format files, the official scoring, and the
prompt formats (official chat, and the sleep layout)."""

from .loader import SUBSETS, load_gsm_infinite, required_fields
from .prompts import official_messages, sleep_features, sleep_texts, tokenize_for_sleep
from .realistic import MAX_REALISTIC_OPS, TEMPLATES, approximate_token_count
from .scoring import (
    accuracy_by_op,
    extract_realistic_answer,
    extract_symbolic_answer,
    gold_realistic_answer,
    leaderboard_score,
    score_gsm_infinite,
    score_realistic,
    score_row,
    score_symbolic,
)
from .symbolic import MAX_SYMBOLIC_OPS
from .task import (
    PAPER_CONTEXT_TOKENS,
    PAPER_OPS,
    GSMInfiniteConfig,
    GSMInfiniteTask,
    generate_gsm_infinite,
    parse_length,
)

__all__ = [
    "MAX_REALISTIC_OPS",
    "MAX_SYMBOLIC_OPS",
    "PAPER_CONTEXT_TOKENS",
    "PAPER_OPS",
    "SUBSETS",
    "TEMPLATES",
    "GSMInfiniteConfig",
    "GSMInfiniteTask",
    "accuracy_by_op",
    "approximate_token_count",
    "extract_realistic_answer",
    "extract_symbolic_answer",
    "generate_gsm_infinite",
    "gold_realistic_answer",
    "leaderboard_score",
    "load_gsm_infinite",
    "official_messages",
    "parse_length",
    "required_fields",
    "score_gsm_infinite",
    "score_realistic",
    "score_row",
    "score_symbolic",
    "sleep_features",
    "sleep_texts",
    "tokenize_for_sleep",
]
