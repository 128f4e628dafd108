"""The evaluation grid: a converted model x tasks x N values x difficulties -> JSON, markdown, plot.

    python eval/evaluate.py --model DIR --task rule110 depo --passes 1 2 4 --steps 4 8 16 32

Every cell of the grid (task, difficulty, N) is scored on held-out data and appended to
``results.json`` in the output directory, which is rewritten atomically after each cell; a
rerun skips the cells already there, so an interrupted evaluation resumes where it stopped.
``results.md`` holds one table per task (difficulty rows, N columns) and ``accuracy.png`` the
accuracy against difficulty, one line per N (matplotlib).

The difficulty axis of each task:

=============  =====  ====================================================================
task           axis   data, and how a model's answer is scored
=============  =====  ====================================================================
rule110        t      Rule 110 steps. Test split generated from the fixed seed; label j's
                      prediction is the argmax over string j's two bit tokens, decoded from
                      the model's own labels 0..j-1 (free running, one forward per label:
                      feeding gold labels back would leak t); ``tasks.reading`` (exact
                      match over the labels, per-label accuracy). The loss is teacher-forced.
depo           k      hops, Depo's test protocol (n = max_nodes, one k per cell); greedy
                      decoding of every answer token in the training layout, each after the
                      model's own earlier answer tokens (free running; the query tokens are
                      given); a word counts as right when all its tokens are; ``tasks.reading``.
                      Also the mean teacher-forced loss per answer token (the paper reports
                      Depo as test loss per k).
gsm_infinite   op     op count. Generated (test split) or loaded from local Hub files
                      (``data``); the sleep layout without chain of thought, cut after the cue
                      "Answer:"; greedy generation of ``max_new_tokens``; the output is scored
                      as "Answer:" + generated text with ``score_gsm_infinite`` (the official
                      rules; the model directory's tokenizer).
=============  =====  ====================================================================

Every batch is laid out by :class:`~sleep_retrofit.tasks.SleepCollator` with the model's
window L as the chunk size: contexts end on a chunk boundary and the question/answer part
is its own chunk, as in training, with left padding where lengths differ. One model load
serves every N: ``passes`` is a per-call argument of the model.

Bad input (a missing model directory or data path, an unknown task or subset, difficulties
out of range, N < 1, ...) raises :class:`EvalInputError` (a ValueError) before any model is
loaded; :func:`run_eval` turns it into a one-line message and exit status 2.
"""

from .cli import add_eval_arguments, default_out, main, run_eval, spec_from_args
from .grid import evaluate_cell, load_model, run_grid
from .groups import prepare_grid
from .report import markdown_report, plot_results
from .spec import DEFAULT_DIFFICULTIES, DIFFICULTY_NAMES, EVAL_TASKS, EvalInputError, EvalSpec, GridResult

__all__ = [
    "DEFAULT_DIFFICULTIES",
    "DIFFICULTY_NAMES",
    "EVAL_TASKS",
    "EvalInputError",
    "EvalSpec",
    "GridResult",
    "add_eval_arguments",
    "default_out",
    "evaluate_cell",
    "load_model",
    "main",
    "markdown_report",
    "plot_results",
    "prepare_grid",
    "run_eval",
    "run_grid",
    "spec_from_args",
]
