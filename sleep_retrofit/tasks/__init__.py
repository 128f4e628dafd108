"""The evaluation tasks: generators, tokenizers, scorers, datasets and the sleep collator.

- `rule110`: the elementary-cellular-automaton task (strings, steps t, labels).
- `depo`: k-hop retrieval on shuffled directed cycles.
- `gsm_infinite`: GSM-Infinite generator (symbolic, medium, hard), Hub-file loader, scoring.
- `tokenizer`: word-level PreTrainedTokenizerFast for the synthetic tasks.
- `splits` / `dataset`: fixed seeds, disjoint train/validation/test splits, datasets.Dataset.
- `collate`: `SleepCollator`, the chunk-aligned layout the sleep engine consumes.

Nothing here depends on model code. See docs/evaluation.md.
"""

from .collate import IGNORE_INDEX, SleepCollator
from .dataset import TASKS, build_dataset, build_dataset_dict, make_task, task_tokenizer
from .depo import DepoConfig, DepoTask, score_depo
from .gsm_infinite import GSMInfiniteConfig, GSMInfiniteTask, load_gsm_infinite, score_gsm_infinite
from .rule110 import Rule110Config, Rule110Task, rule110_evolve, rule110_step, score_rule110
from .splits import SPLITS, split_of_key, split_seed
from .tokenizer import SPECIAL_TOKENS, WordVocabulary, build_word_tokenizer

__all__ = [
    "IGNORE_INDEX",
    "SPECIAL_TOKENS",
    "SPLITS",
    "TASKS",
    "DepoConfig",
    "DepoTask",
    "GSMInfiniteConfig",
    "GSMInfiniteTask",
    "Rule110Config",
    "Rule110Task",
    "SleepCollator",
    "WordVocabulary",
    "build_dataset",
    "build_dataset_dict",
    "build_word_tokenizer",
    "load_gsm_infinite",
    "make_task",
    "rule110_evolve",
    "rule110_step",
    "score_depo",
    "score_gsm_infinite",
    "score_rule110",
    "split_of_key",
    "split_seed",
    "task_tokenizer",
]
