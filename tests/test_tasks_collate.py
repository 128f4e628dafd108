"""The sleep collator: chunk-aligned left padding, masks, labels, and its errors."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sleep_retrofit.tasks import IGNORE_INDEX, SleepCollator, build_dataset, task_tokenizer

PAD = 0


def test_layout_by_hand():
    L = 4
    a = {"input_ids": [1, 2, 3, 4, 5, 6, 7, 8], "loss_mask": [0, 0, 0, 0, 0, 0, 1, 1], "target_start": 5}
    b = {"input_ids": [11, 12, 13, 14], "loss_mask": [0, 0, 0, 1], "target_start": 2}
    batch = SleepCollator(L, PAD)([a, b])
    # C = 4 * ceil(5 / 4) = 8, T = max(3, 2) = 3.
    assert batch["input_ids"].tolist() == [
        [0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8],
        [0, 0, 0, 0, 0, 0, 11, 12, 0, 13, 14],
    ]
    assert batch["attention_mask"].tolist() == [
        [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1],
        [0, 0, 0, 0, 0, 0, 1, 1, 0, 1, 1],
    ]
    assert batch["loss_mask"].tolist() == [
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
    ]
    assert batch["labels"].tolist() == [
        [-100] * 9 + [7, 8],
        [-100] * 10 + [14],
    ]
    assert set(batch) == {"input_ids", "attention_mask", "labels", "loss_mask"}


def _examples(draw_lengths):
    """Examples with distinct token values so rows can be read back."""
    out = []
    for i, (context, query, answers) in enumerate(draw_lengths):
        n = context + query + answers
        ids = [1000 * (i + 1) + j for j in range(n)]
        out.append(
            {"input_ids": ids, "loss_mask": [0] * (context + query) + [1] * answers, "target_start": context}
        )
    return out


def _chunks(row_ids, row_mask, L):
    """Real tokens per chunk, leaving out chunks that are pure padding."""
    chunks = [
        [t for t, m in zip(row_ids[i : i + L], row_mask[i : i + L], strict=True) if m]
        for i in range(0, len(row_ids), L)
    ]
    return [chunk for chunk in chunks if chunk]


@settings(max_examples=25, deadline=None)
@given(
    L=st.integers(1, 9),
    lengths=st.lists(
        st.tuples(st.integers(0, 30), st.integers(1, 4), st.integers(0, 12)), min_size=1, max_size=5
    ),
)
def test_layout_invariants(L, lengths):
    examples = _examples(lengths)
    collator = SleepCollator(L, PAD, per_token_fields=("tag",), return_context_length=True)
    for ex in examples:
        ex["tag"] = [7 * m for m in ex["loss_mask"]]
    batch = collator(examples)
    ids, attn, mask, labels = (batch[k] for k in ("input_ids", "attention_mask", "loss_mask", "labels"))
    C = int(batch["context_length"])
    B, P = ids.shape
    T = P - C
    assert B == len(examples) and C % L == 0 and (T <= L or T % L == 0)
    assert C == L * -(-max(c for c, _, _ in lengths) // L)
    # Chunk kinds are shared by all rows: no loss before column C.
    assert not mask[:, :C].any()
    assert torch.equal(labels, torch.where(mask.bool(), ids, torch.full_like(ids, IGNORE_INDEX)))
    assert torch.equal(batch["tag"], 7 * mask)
    assert not ids[attn == 0].any()
    for row, ex, (context, _, _) in zip(range(B), examples, lengths, strict=True):
        real = attn[row].bool()
        assert ids[row][real].tolist() == ex["input_ids"]
        assert mask[row][real].tolist() == ex["loss_mask"]
        # The context ends exactly at column C; the example ends at the last column.
        columns = real.nonzero().flatten().tolist()
        assert columns[:context] == list(range(C - context, C))
        assert columns[-1] == P - 1
        # Every target is predicted from a position inside the target part.
        for col in mask[row].nonzero().flatten().tolist():
            assert col - 1 >= C and attn[row, col - 1] == 1
        # The chunking of an example does not depend on its batch (up to pure-padding chunks).
        alone = collator([ex])
        assert _chunks(alone["input_ids"][0].tolist(), alone["attention_mask"][0].tolist(), L) == _chunks(
            ids[row].tolist(), attn[row].tolist(), L
        )


def test_defaults_from_loss_mask_or_labels():
    L = 3
    with_mask = {"input_ids": [5, 6, 7, 8, 9], "loss_mask": [0, 0, 0, 1, 1]}  # target_start -> 2
    batch = SleepCollator(L, PAD)([with_mask])
    assert batch["input_ids"].tolist() == [[0, 5, 6, 7, 8, 9]]
    from_labels = {"input_ids": [5, 6, 7, 8, 9], "labels": [-100, -100, -100, 8, 9]}
    assert torch.equal(SleepCollator(L, PAD)([from_labels])["loss_mask"], batch["loss_mask"])
    prompt_only = {"input_ids": [5, 6, 7, 8, 9]}  # no targets: one part, plain left padding
    out = SleepCollator(L, PAD)([prompt_only])
    assert out["input_ids"].tolist() == [[0, 5, 6, 7, 8, 9]] and not out["loss_mask"].any()


def test_fixed_lengths_and_tokenizer_pad_id():
    data = build_dataset("rule110", "validation", 3, steps=2)
    tok = task_tokenizer("rule110", steps=2)
    batch = SleepCollator(24, tokenizer=tok, context_length=120, target_length=24)(list(data))
    assert batch["input_ids"].shape == (3, 144)
    assert (batch["input_ids"][:, :24] == tok.pad_token_id).all()
    assert batch["input_ids"][:, 24:120].tolist() == [row["input_ids"][:96] for row in data]
    assert (batch["input_ids"][:, 120:139] == tok.pad_token_id).all()


def test_works_as_a_dataloader_collate_fn():
    data = build_dataset("depo", "train", 10)
    loader = torch.utils.data.DataLoader(data, batch_size=4, collate_fn=SleepCollator(75, PAD))
    for batch in loader:
        assert batch["input_ids"].shape[1] % 75 <= 60
        assert batch["loss_mask"].sum() == 10 * 2 * batch["input_ids"].shape[0]


@pytest.mark.parametrize(
    "feature, message",
    [
        ({"input_ids": [1, 2, 3, 4], "loss_mask": [0, 1, 0, 0], "target_start": 2}, "loss on context tokens"),
        (
            {"input_ids": [1, 2, 3, 4], "loss_mask": [0, 0, 1, 1], "target_start": 2},
            "first token of the target part",
        ),
        ({"input_ids": [1, 2, 3], "loss_mask": [1, 0, 0]}, "first token is a target"),
        ({"input_ids": [1, 2, 3], "loss_mask": [0, 1]}, "loss_mask must be 3 values"),
        ({"input_ids": [1, 2, 3], "loss_mask": [0, 2, 0]}, "loss_mask must be 3 values"),
        ({"input_ids": [1, 2], "target_start": 5}, "outside"),
        ({"input_ids": []}, "empty input_ids"),
        ({"tokens": ["a"]}, "has no 'input_ids'"),
    ],
)
def test_bad_examples(feature, message):
    with pytest.raises(ValueError, match=message):
        SleepCollator(4, PAD)([feature])


def test_bad_settings():
    with pytest.raises(ValueError, match="chunk_size"):
        SleepCollator(0, PAD)
    with pytest.raises(ValueError, match="pad_token_id"):
        SleepCollator(4)
    with pytest.raises(ValueError, match="context_length must be a non-negative multiple"):
        SleepCollator(4, PAD, context_length=6)
    with pytest.raises(ValueError, match="target_length"):
        SleepCollator(4, PAD, target_length=6)
    with pytest.raises(ValueError, match="empty batch"):
        SleepCollator(4, PAD)([])
    long_context = {"input_ids": list(range(1, 11)), "target_start": 9}
    with pytest.raises(ValueError, match="> context_length=8"):
        SleepCollator(4, PAD, context_length=8)([long_context])
    with pytest.raises(ValueError, match="> target_length=2"):
        SleepCollator(4, PAD, target_length=2)([{"input_ids": [1, 2, 3], "target_start": 0}])
    with pytest.raises(ValueError, match="per-token field 'tag'"):
        SleepCollator(4, PAD, per_token_fields=("tag",))([{"input_ids": [1, 2], "tag": [0]}])


def test_hf_trainer_with_its_defaults_trains_on_the_targets(tmp_path):
    """transformers.Trainer drops dataset columns that forward() does not name
    (remove_unused_columns=True): the model names loss_mask / target_start, so the collator
    still sees them and the batches carry targets (before, every label became -100 and the
    Trainer logged loss 0.0)."""
    from transformers import Trainer, TrainingArguments

    from sleep_retrofit.toy import build_toy_hybrid

    tokenizer = task_tokenizer("rule110", width=8, num_strings=2)
    data = build_dataset("rule110", "train", 8, width=8, num_strings=2, steps=0)
    torch.manual_seed(0)
    model = build_toy_hybrid(len(tokenizer), hidden_size=16, num_layers=2, num_heads=2, window=8)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=4,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        learning_rate=1e-2,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=data, data_collator=SleepCollator(8, tokenizer=tokenizer)
    )
    trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    assert losses and all(loss > 0.1 for loss in losses)
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())


def test_a_batch_without_targets_fails_loudly_in_the_model():
    from sleep_retrofit.toy import build_toy_hybrid

    model = build_toy_hybrid(20, hidden_size=16, num_layers=2, num_heads=2, window=4)
    batch = SleepCollator(4, PAD)([{"input_ids": [5, 6, 7, 8, 9]}])  # a row with no target
    with pytest.raises(ValueError, match="labels has no target.*remove_unused_columns|loss_mask"):
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
