"""Distillation from the base model (train/objectives.py): no task labels, plain text; the student
(the converted model under hard eviction and sleep, window 4x shorter than a row) moves towards
the teacher (the base with the whole row in view)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sleep_retrofit.tasks import SleepCollator
from sleep_retrofit.train import ConfigError, train
from sleep_retrofit.train.config import config_from_dict
from sleep_retrofit.train.data import build_rows, training_tokenizer
from sleep_retrofit.train.model_setup import build_model
from sleep_retrofit.train.objectives import distillation_loss, frozen_teacher

REPO = Path(__file__).resolve().parents[1]
WINDOW, LENGTH = 16, 64


def _corpus(tmp_path: Path) -> Path:
    """The project's own docs as a text corpus (markdown files, ~150K characters)."""
    corpus = tmp_path / "corpus"
    corpus.mkdir(exist_ok=True)
    for page in sorted((REPO / "docs").glob("*.md")):
        (corpus / page.name).write_text(page.read_text())
    return corpus


def _config(tmp_path: Path, **stage) -> object:
    return config_from_dict(
        {
            "output_dir": str(tmp_path / "run"),
            "stages": ["stage1"],
            "batch_size": 8,
            "eval_batch_size": 16,
            "progress": False,
            "save_every": 1000,
            "model": {"source": "tiny-llama", "window": WINDOW, "passes": 2, "fast_weights": "gdn"},
            "data": {
                "task": "text",
                "path": str(_corpus(tmp_path)),
                "options": {"length": LENGTH},
                "train_examples": 256,
                "eval_examples": 32,
            },
            "stage1": {
                "max_steps": 25,
                "optimizer": "adamw",
                "adamw_lr": 3e-3,
                "objective": "distill",
                **stage,
            },
        }
    )


def _gap(model, teacher, rows, tokenizer) -> float:
    """Mean KL(teacher || student) per target token: the student's gap to full attention."""
    batch = SleepCollator(WINDOW, tokenizer.pad_token_id or 0)(rows)
    with torch.no_grad():
        return float(distillation_loss(model.eval(), teacher, batch, 2, WINDOW, "hard"))


def test_distillation_lowers_the_students_gap_to_the_full_attention_teacher(tmp_path):
    config = _config(tmp_path)
    model, model_tokenizer = build_model(config)
    tokenizer = training_tokenizer(config, model_tokenizer)
    teacher = frozen_teacher(model)
    rows = build_rows(config, "validation", 32, tokenizer)
    assert all(len(row["input_ids"]) == LENGTH == 4 * WINDOW for row in rows)
    before = _gap(model, teacher, rows, tokenizer)
    assert before > 0.01  # the window loses what the teacher sees

    (result,) = train(config)
    from transformers import AutoModelForCausalLM

    trained = AutoModelForCausalLM.from_pretrained(result.directory / "model")
    after = _gap(trained, teacher, rows, tokenizer)
    assert after < 0.7 * before, (before, after)
    # stage 1 trains only the blocks: the teacher (the base) is untouched by the stage
    for name, tensor in teacher.state_dict().items():
        assert torch.equal(trained.base.state_dict()[name], tensor), name


def test_the_kl_is_zero_when_the_student_sees_what_the_teacher_sees(tmp_path):
    """A window past the whole row with N = 1 is the base itself (blocks are the identity at
    insertion): the distillation loss is 0 up to float error, so it measures only what
    eviction loses."""
    config = _config(tmp_path)
    model, model_tokenizer = build_model(config)
    tokenizer = training_tokenizer(config, model_tokenizer)
    rows = build_rows(config, "validation", 8, tokenizer)
    batch = SleepCollator(LENGTH, tokenizer.pad_token_id or 0)(rows)
    with torch.no_grad():
        kl = distillation_loss(model.eval(), frozen_teacher(model), batch, 1, LENGTH, "hard")
    assert abs(float(kl)) < 1e-5


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"objective": "teach"}, r"stage1.objective must be one of \['ce', 'distill'\]"),
        ({"distill_weight": 1.5}, r"distill_weight must be in \[0, 1\]"),
        ({"distill_temperature": 0}, "distill_temperature must be a positive number"),
    ],
)
def test_bad_distillation_settings(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        _config(tmp_path, **change)


def test_text_data_needs_a_path(tmp_path):
    values = _config(tmp_path).to_dict()
    values["data"]["path"] = str(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="is no local file or directory"):
        config_from_dict(values)
