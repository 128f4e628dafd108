"""Sessions: ingest a document once, answer many questions from its saved state
(sleep_retrofit.sessions, SleepRetrofitForCausalLM.ingest / generate(sleep_state=...), and the
`ingest` / `ask` commands)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import converted_with_active_blocks
from transformers import AutoModelForCausalLM

import sleep_retrofit  # noqa: F401  (registers the converted model type)
from sleep_retrofit.cli import main as cli
from sleep_retrofit.convert import convert
from sleep_retrofit.sessions import SleepState, SleepStateError, model_fingerprint

WINDOW, PASSES = 8, 2
GREEDY = {"max_new_tokens": 6, "min_new_tokens": 6, "do_sample": False}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return converted_with_active_blocks(tmp_path_factory.mktemp("sessions") / "model", WINDOW, PASSES)


@pytest.fixture
def model(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir).eval()


def _ids(model, *shape: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, model.config.vocab_size, shape, generator=generator)


def _tensors(state: SleepState) -> dict[str, torch.Tensor]:
    return state.cache.to_tensors()[0]


@pytest.mark.parametrize("eviction", ["hard", "sliding"])
def test_answers_from_a_saved_state_equal_answers_after_ingesting(model, tmp_path, eviction):
    """Bit-exact on CPU: saving and loading changes nothing, and both equal reading the document
    and the question as one prompt (29 tokens: the state ends inside a chunk)."""
    document, question = _ids(model, 29, seed=0), _ids(model, 1, 5, seed=1)
    state = model.ingest(document, eviction=eviction)
    assert (state.tokens, state.window, state.passes, state.eviction) == (29, WINDOW, PASSES, eviction)
    answer = model.generate(question, sleep_state=state, **GREEDY)
    assert torch.equal(answer[:, :5], question) and answer.shape == (1, 11)

    loaded = SleepState.load(state.save(tmp_path / "state"))
    assert torch.equal(model.generate(question, sleep_state=loaded, **GREEDY), answer)
    for name, tensor in _tensors(state).items():
        assert torch.equal(_tensors(loaded)[name], tensor), name

    whole = model.generate(torch.cat([document[None], question], dim=1), eviction=eviction, **GREEDY)
    assert torch.equal(whole[:, 29:], answer)


def test_one_state_answers_many_questions_without_interference(model):
    state = model.ingest(_ids(model, 21, seed=2))
    before = _tensors(state)
    first, second = _ids(model, 1, 5, seed=3), _ids(model, 1, 3, seed=4)
    alone_first = model.generate(first, sleep_state=state, **GREEDY)
    alone_second = model.generate(second, sleep_state=state, **GREEDY)
    # A batch: the shorter question left-padded (its own group, so chunked as when alone).
    batch = torch.cat([first, torch.cat([torch.zeros(1, 2, dtype=torch.long), second], dim=1)])
    mask = torch.ones_like(batch)
    mask[1, :2] = 0
    both = model.generate(batch, attention_mask=mask, sleep_state=state, pad_token_id=0, **GREEDY)
    assert torch.equal(both[0], alone_first[0])
    assert torch.equal(both[1, 2:], alone_second[0])
    assert torch.equal(model.generate(first, sleep_state=state, **GREEDY), alone_first)  # after the others
    for name, tensor in _tensors(state).items():
        assert torch.equal(before[name], tensor), f"{name} changed by answering"


def test_passes_at_answer_time_default_to_the_states_and_can_be_overridden(model):
    """A question of 8 tokens after 16 completes a chunk, which is consolidated with the state's
    N unless the call says otherwise; the window and eviction stay the state's."""
    state = model.ingest(_ids(model, 16, seed=5), passes=4)
    question = _ids(model, 1, 8, seed=6)
    default = model.generate(
        question, sleep_state=state, output_logits=True, return_dict_in_generate=True, **GREEDY
    )
    same = model.generate(
        question, sleep_state=state, passes=4, output_logits=True, return_dict_in_generate=True, **GREEDY
    )
    other = model.generate(
        question, sleep_state=state, passes=1, output_logits=True, return_dict_in_generate=True, **GREEDY
    )
    assert torch.equal(default.logits[1], same.logits[1])
    assert not torch.allclose(default.logits[1], other.logits[1])
    with pytest.raises(ValueError, match="read with window=8; it cannot continue with window=16"):
        model.generate(question, sleep_state=state, window=16, **GREEDY)
    with pytest.raises(ValueError, match="read with eviction='hard'"):
        model.generate(question, sleep_state=state, eviction="sliding", **GREEDY)


def test_a_state_from_another_model_is_refused(model, model_dir, tmp_path):
    state = model.ingest(_ids(model, 12, seed=7))
    state.save(tmp_path / "state")
    other = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    assert model_fingerprint(other) == state.fingerprint  # the same weights, another instance
    with torch.no_grad():
        other.base.model.layers[0].self_attn.q_proj.weight[0, 0] += 1.0  # in place: the memo must notice
    with pytest.raises(SleepStateError, match="made by another model"):
        other.generate(_ids(model, 1, 4, seed=8), sleep_state=SleepState.load(tmp_path / "state"), **GREEDY)


def test_bad_states_and_arguments_get_clear_errors(model, tmp_path):
    question = _ids(model, 1, 4, seed=9)
    with pytest.raises(
        SleepStateError, match="is not a saved sleep state: state.safetensors, state.json missing"
    ):
        SleepState.load(tmp_path / "nothing")
    state = model.ingest(_ids(model, 2, 10, seed=10))  # two documents
    saved = state.save(tmp_path / "two")
    with pytest.raises(SleepStateError, match="holds 2 documents; continue it with 2 rows, not 1"):
        model.generate(question, sleep_state=state, **GREEDY)
    assert model.generate(_ids(model, 2, 4, seed=11), sleep_state=state, **GREEDY).shape == (2, 10)
    data = (saved / "state.safetensors").read_bytes()
    (saved / "state.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(SleepStateError, match="cannot read the sleep state in"):
        SleepState.load(saved)
    with pytest.raises(TypeError, match="sleep_state must be a SleepState"):
        model.generate(question, sleep_state={"tokens": 3}, **GREEDY)
    with pytest.raises(ValueError, match=r"token ids must be in \[0, "):
        model.ingest(torch.tensor([1, 2, model.config.vocab_size]))
    with pytest.raises(ValueError, match="non-empty"):
        model.ingest(torch.tensor([], dtype=torch.long))


def test_ingest_reads_text_with_the_models_tokenizer(model):
    from transformers import AutoTokenizer

    text = "Before a chunk of context is evicted, the model sleeps on it. " * 4
    tokenizer = AutoTokenizer.from_pretrained(model.name_or_path)
    ids = tokenizer(text, return_tensors="pt").input_ids
    assert model.ingest(text).tokens == ids.shape[1]
    for name, tensor in _tensors(model.ingest(ids)).items():
        assert torch.equal(_tensors(model.ingest(text))[name], tensor), name


def test_ingest_and_ask_commands(model_dir, tmp_path, capsys):
    document = tmp_path / "doc.txt"
    document.write_text("The quick brown fox jumps over the lazy dog. " * 12)
    assert cli(["ingest", str(model_dir), "--file", str(document), "--out", str(tmp_path / "state")]) == 0
    out = capsys.readouterr().out
    assert f"chunk(s) of L={WINDOW} consolidated with N={PASSES}" in out
    assert (tmp_path / "state" / "state.safetensors").is_file()
    argv = ["ask", str(model_dir), "--state", str(tmp_path / "state"), "--max-new-tokens", "4"]
    assert cli([*argv, "--prompt", "Who jumps?", "--prompt", "Over what?"]) == 0
    out = capsys.readouterr().out
    assert out.count("Q: ") == 2 and "2 question(s) from one state of" in out

    # The same answer alone as in the batch, and as the Python API gives it.
    assert cli([*argv, "--prompt", "Who jumps?"]) == 0
    alone = capsys.readouterr().out
    assert alone.split("\n")[1] == out.split("\n")[1]

    assert (
        cli(["ingest", str(model_dir), "--file", str(tmp_path / "none.txt"), "--out", str(tmp_path / "x")])
        == 2
    )
    assert "is not a file" in capsys.readouterr().err
    assert cli([*argv[:2], "--state", str(tmp_path / "none"), "--prompt", "x"]) == 2
    assert "is not a saved sleep state" in capsys.readouterr().err


def test_ask_refuses_a_state_of_another_checkpoint(model_dir, tmp_path):
    other = convert("tiny-qwen2", tmp_path / "other", window=WINDOW, passes=PASSES)
    document = tmp_path / "doc.txt"
    document.write_text("A short document. " * 10)
    assert cli(["ingest", str(other), "--file", str(document), "--out", str(tmp_path / "state")]) == 0
    done = subprocess.run(
        [sys.executable, "-m", "sleep_retrofit.cli", "ask", str(model_dir),
         "--state", str(tmp_path / "state"), "--prompt", "x"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2
    assert "made by another model" in done.stderr and len(done.stderr.strip().splitlines()) == 1
