"""The sleep engine's invariants (design.md, "Invariants" 4, 5, 7): N=1 hard eviction is the plain
hybrid chunked forward, results do not depend on how the input is fed, attention memory is bounded
by the window, gradients reach every chunk and every pass, and N>1 really changes the state.

Models: a tiny Llama (GDN blocks inserted after layers 3 and 7), the Jet-Nemotron fixture (its own
JetBlocks are the fast weights) and the Ouro fixture (Jet blocks inserted in its shared stack).
Inserted blocks get random output projections: at insertion they are the identity, and with the
identity most of these invariants would hold trivially.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import requires_cuda
from helpers import load_fixture_model, random_ids, randomise_fast_weights, tiny_llama_config
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from transformers import LlamaForCausalLM

import sleep_retrofit  # noqa: F401  (registers the native families and the converted model)
from sleep_retrofit.layers import FastWeightState
from sleep_retrofit.modeling import SleepRetrofitForCausalLM
from sleep_retrofit.sleep import SleepCache, SleepEngine, SleepSettings, StackBlock
from sleep_retrofit.sleep.families import JetNemotronLayer, family_adapter

L = 8  # chunk length of every test here unless said otherwise
FAMILIES = ("llama", "jet_nemotron", "ouro")
ATOL = 1e-4  # chunked vs recurrent kernels and differently shaped matmuls differ by ~1e-5

pytestmark = pytest.mark.usefixtures("one_thread")


def load_base(family: str) -> nn.Module:
    if family == "llama":
        torch.manual_seed(0)
        return LlamaForCausalLM(tiny_llama_config(max_position_embeddings=512)).eval()
    return load_fixture_model(family)


@pytest.fixture(scope="module")
def models() -> dict[str, SleepRetrofitForCausalLM]:
    """Converted models with the family default plans, read-only for the tests."""
    converted = {}
    for family in FAMILIES:
        model = SleepRetrofitForCausalLM.from_base(load_base(family), settings=SleepSettings(window=L)).eval()
        randomise_fast_weights(model)
        converted[family] = model
    assert len(converted["llama"].fast_weights) == 2 and len(converted["ouro"].fast_weights) == 2
    return converted


def feed(engine: SleepEngine, embeds: torch.Tensor, splits: list[int], padding_mask=None) -> torch.Tensor:
    """Hidden states of every position, the input fed in pieces of the given lengths."""
    cache, outputs, start = SleepCache(), [], 0
    for size in splits:
        mask = None if padding_mask is None else padding_mask[:, start : start + size]
        outputs.append(engine.forward(embeds[:, start : start + size], cache, padding_mask=mask))
        start += size
    assert start == embeds.shape[1]
    return torch.cat(outputs, dim=1)


def fast_weight_modules(blocks: list[StackBlock]) -> list[nn.Module]:
    """The modules whose (hidden, state) outputs carry fast-weight state, in stack order."""
    modules = []
    for block in blocks:
        if block.stateful:
            # Inserted blocks return (hidden, state) themselves; a Jet-Nemotron jet layer's attention does.
            modules.append(block.layer.self_attn if isinstance(block, JetNemotronLayer) else block.module)
    return modules


def states_equal(a: dict[str, FastWeightState], b: dict[str, FastWeightState]) -> bool:
    """Bitwise equality of every state (recurrent and conv parts)."""
    return sorted(a) == sorted(b) and all(
        torch.equal(a[k].recurrent, b[k].recurrent) and all(map(torch.equal, a[k].conv, b[k].conv)) for k in a
    )


# ------------------------------------------------------------ N=1 == the plain hybrid chunked forward


def causal_bias(length: int, window: int | None) -> torch.Tensor:
    """[1, 1, T, T] additive mask: causal, and when `window` is set, the last `window` tokens only."""
    query = torch.arange(length)[:, None]
    key = torch.arange(length)[None, :]
    visible = key <= query
    if window is not None:
        visible &= key > query - window
    bias = torch.zeros(length, length).masked_fill(~visible, torch.finfo(torch.float32).min)
    return bias[None, None]


def hand_written_hybrid(model: SleepRetrofitForCausalLM, ids: torch.Tensor, eviction: str) -> torch.Tensor:
    """Logits of the plain hybrid (no sleep) for a Llama-family or Ouro base with inserted blocks,
    written as a loop over the base model's own layers, independent of the stack view and engine.

    hard: the stream cut into chunks of L, attention within a chunk, the blocks' states carried;
    sliding: one pass over the whole stream, each token attending to itself and the L-1 before it.
    """
    base, inner = model.base, model.base.model
    blocks = {int(index): block for index, block in model.fast_weights.items()}
    adapter = family_adapter(base.config)  # facts about the family, not the stack view
    steps, step_norm = adapter.steps_per_pass(base.config), adapter.step_norm(inner)
    length = ids.shape[1]
    if eviction == "hard":
        pieces, window = [(s, min(s + L, length)) for s in range(0, length, L)], None
    else:
        pieces, window = [(0, length)], L
    states: dict[tuple[int, int], FastWeightState] = {}
    logits = []
    for start, stop in pieces:
        hidden = inner.embed_tokens(ids[:, start:stop])
        rope = inner.rotary_emb(hidden, torch.arange(start, stop)[None])
        bias = causal_bias(stop - start, window)
        for step in range(steps):
            for index, layer in enumerate(inner.layers):
                hidden = layer(hidden, attention_mask=bias, position_embeddings=rope)
                if index in blocks:
                    hidden, states[index, step] = blocks[index](hidden, state=states.get((index, step)))
            if step_norm is not None:
                hidden = step_norm(hidden)  # Ouro's norm between loop steps (and at the end)
        final_norm = adapter.final_norm(inner)
        logits.append(base.lm_head(final_norm(hidden) if final_norm is not None else hidden))
    return torch.cat(logits, dim=1)


@pytest.mark.parametrize("family", ["llama", "ouro"])
@pytest.mark.parametrize("eviction", ["hard", "sliding"])
def test_n1_equals_hand_written_hybrid(models, family, eviction):
    model = models[family]
    ids = random_ids(2, 3 * L + 5, seed=1)
    with torch.no_grad():
        expected = hand_written_hybrid(model, ids, eviction)
        logits = model(ids, passes=1, eviction=eviction).logits
        plain = model.base(ids).logits
    torch.testing.assert_close(logits, expected, atol=ATOL, rtol=ATOL)
    # The reference is not trivially the full forward: eviction changes late positions.
    assert (logits[:, L:] - plain[:, L:]).abs().max() > 1e-2


def test_n1_hard_equals_jet_nemotron_chunked_with_its_own_cache(models):
    """Jet-Nemotron run chunk by chunk by its own forward: a fresh JetNemotronCache per chunk (no
    keys/values of earlier chunks) into which the JetBlock states of the previous chunk are copied."""
    model = models["jet_nemotron"]
    base = model.base
    ids = random_ids(2, 3 * L + 5, seed=2)
    with torch.no_grad():
        logits, previous = [], None
        for start in range(0, ids.shape[1], L):
            cache = base.model.make_cache()
            for index, layer_type in enumerate(cache.layer_types):
                if layer_type == "jet" and previous is not None:
                    cache.update_jet_state(previous.get_jet_state(index), index, num_tokens=0)
            logits.append(base(ids[:, start : start + L], cache=cache, use_cache=True).logits)
            previous = cache
        expected = torch.cat(logits, dim=1)
        result = model(ids, passes=1, eviction="hard").logits
        plain = base(ids).logits
    torch.testing.assert_close(result, expected, atol=ATOL, rtol=ATOL)
    assert (result[:, L:] - plain[:, L:]).abs().max() > 1e-2


def test_n1_sliding_equals_jet_nemotron_with_windowed_attention(models):
    """With sliding eviction at N=1 every attention layer sees the last L tokens: the base model
    whose attention layers are all sliding-window layers of width L, run over the whole stream."""
    model = models["jet_nemotron"]
    config = copy.deepcopy(model.base.config)
    config.layer_types = [t if t == "jet" else "swa" for t in config.layer_types]
    config.efficient_attention_config["swa"]["window_size"] = L
    windowed = type(model.base)(config).eval()
    windowed.load_state_dict(model.base.state_dict())
    ids = random_ids(2, 3 * L + 5, seed=3)
    with torch.no_grad():
        expected = windowed(ids).logits
        result = model(ids, passes=1, eviction="sliding").logits
    torch.testing.assert_close(result, expected, atol=ATOL, rtol=ATOL)


# ------------------------------------------------------------ independent of how the input is fed

SPLITS = {
    "whole": [29],
    "by chunk": [L, L, L, 5],
    "by token": [1] * 29,
    "odd": [3, 7, 2, 11, 6],
    "across": [13, 16],
}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("passes", [1, 3])
@pytest.mark.parametrize("eviction", ["hard", "sliding"])
def test_results_do_not_depend_on_how_the_input_is_fed(models, family, passes, eviction):
    engine = models[family].engine(passes=passes, eviction=eviction)
    with torch.no_grad():
        embeds = engine.stack.embed(random_ids(2, 29, seed=4))
        whole = feed(engine, embeds, SPLITS["whole"])
        for name, splits in SPLITS.items():
            torch.testing.assert_close(feed(engine, embeds, splits), whole, atol=ATOL, rtol=ATOL, msg=name)
        # Only the last position wanted: complete chunks are consolidated without a wake pass.
        cache = SleepCache()
        wanted = torch.zeros(29, dtype=torch.bool)
        wanted[-1] = True
        last = engine.forward(embeds, cache, output_positions=wanted)
    torch.testing.assert_close(last, whole[:, -1:], atol=ATOL, rtol=ATOL)
    assert cache.stats["evictions"] == 3
    # Context chunks (hard) and N > 1 consolidate; N=1 sliding only wakes.
    expected_consolidations = 0 if (passes == 1 and eviction == "sliding") else 3
    assert cache.stats["consolidations"] == expected_consolidations


@settings(max_examples=12, deadline=None)
@given(
    cuts=st.lists(st.integers(1, 28), max_size=6, unique=True),
    passes=st.sampled_from([1, 3]),
    eviction=st.sampled_from(["hard", "sliding"]),
)
def test_random_splits_match_whole_feed(models, cuts, passes, eviction):
    engine = models["llama"].engine(passes=passes, eviction=eviction)
    bounds = [0, *sorted(cuts), 29]
    splits = [b - a for a, b in zip(bounds, bounds[1:], strict=False)]
    with torch.no_grad():
        embeds = engine.stack.embed(random_ids(1, 29, seed=5))
        torch.testing.assert_close(
            feed(engine, embeds, splits), feed(engine, embeds, [29]), atol=ATOL, rtol=ATOL
        )


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("passes", [1, 3])
@pytest.mark.parametrize("eviction", ["hard", "sliding"])
def test_left_padded_batch_matches_unbatched(models, family, passes, eviction):
    """Pad lengths that are multiples of L keep every row's chunk boundaries: each row of a
    left-padded batch equals that row alone, however the batch is fed."""
    engine = models[family].engine(passes=passes, eviction=eviction)
    length, pads = 3 * L + 5, [0, L, 2 * L]
    rows = [random_ids(1, length - pad, seed=10 + pad) for pad in pads]
    ids = torch.zeros(len(pads), length, dtype=torch.long)
    mask = torch.zeros(len(pads), length, dtype=torch.long)
    for row, (pad, tokens) in enumerate(zip(pads, rows, strict=True)):
        ids[row, pad:], mask[row, pad:] = tokens[0], 1
    with torch.no_grad():
        embeds = engine.stack.embed(ids)
        alone = [feed(engine, engine.stack.embed(tokens), [tokens.shape[1]]) for tokens in rows]
        for splits in (SPLITS["whole"], SPLITS["by token"], SPLITS["odd"]):
            batched = feed(engine, embeds, splits, padding_mask=mask)
            assert torch.isfinite(batched).all()
            for row, pad in enumerate(pads):
                torch.testing.assert_close(batched[row : row + 1, pad:], alone[row], atol=ATOL, rtol=ATOL)


# ------------------------------------------------------------ attention memory bounded by the window


@pytest.mark.parametrize("family", ["llama", "jet_nemotron"])
@pytest.mark.parametrize("eviction", ["hard", "sliding"])
def test_attention_cache_at_16k_tokens_equals_that_at_1k(models, family, eviction):
    window, tail = 256, 37  # stop mid-chunk so the kept keys/values are not trivially empty
    engine = models[family].engine(passes=2, window=window, eviction=eviction)

    def consume(total: int) -> SleepCache:
        cache = SleepCache()
        with torch.no_grad():
            for start in range(0, total, 1024):  # outputs only at the very end keeps it fast
                size = min(1024, total - start)
                wanted = torch.zeros(size, dtype=torch.bool)
                wanted[-1] = start + size == total
                ids = random_ids(1, size, seed=start)
                engine.forward(engine.stack.embed(ids), cache, output_positions=wanted)
        return cache

    def kv_bytes(cache: SleepCache) -> int:
        return sum(t.numel() * t.element_size() for t in [*cache.keys.values(), *cache.values.values()])

    short, long = consume(1024 + tail), consume(16384 + tail)
    assert long.seen_tokens == 16384 + tail and long.stats["evictions"] == 16384 // window
    kept = tail if eviction == "hard" else window - 1
    assert short.attention_tokens == long.attention_tokens == kept
    assert kv_bytes(short) == kv_bytes(long) > 0
    assert all(k.shape[-2] == kept for k in long.keys.values())
    assert short.memory_bytes() == long.memory_bytes()


# ------------------------------------------------------------ gradients: every chunk, every pass


class DetachAtFirstEviction(SleepCache):
    """A cache that cuts the gradient path through the fast-weight state at the first eviction."""

    def commit_chunk(self, eviction: str) -> None:
        if self.stats["evictions"] == 0:
            self.states = {key: state.detach() for key, state in self.states.items()}
        super().commit_chunk(eviction)


def last_chunk_loss(model, ids, passes, cache=None):
    """Loss with targets in the last (partial) chunk only; the first two chunks are context."""
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    labels = ids.clone()
    labels[:, : 2 * L + 1] = -100
    loss = model(inputs_embeds=embeds, labels=labels, passes=passes, cache=cache).loss
    return loss, embeds


@pytest.mark.parametrize("family", FAMILIES)
def test_loss_on_last_chunk_reaches_first_chunk_through_the_state(models, family):
    model = models[family]
    ids = random_ids(2, 2 * L + 5, seed=6)
    fast_params = [p for m in fast_weight_modules(model.engine().stack.body) for p in m.parameters()]

    def gradients(passes: int, cache=None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        loss, embeds = last_chunk_loss(model, ids, passes, cache)
        loss.backward()
        return embeds.grad, [p.grad.clone() for p in fast_params]

    for passes in (1, 3):
        embeds_grad, params_grad = gradients(passes)
        # Hard eviction drops the first chunk's keys/values: only the state carries it forward.
        assert (embeds_grad[:, :L].abs().sum(-1) > 0).all(), "a first-chunk token gets no gradient"
        cut_embeds_grad, cut_params_grad = gradients(passes, DetachAtFirstEviction())
        assert torch.count_nonzero(cut_embeds_grad[:, :L]) == 0, "a path other than the state exists"
        assert (cut_embeds_grad[:, L:-1].abs().sum(-1) > 0).all()  # (the last token has no target)
        # The fast-weight parameters' gradient includes their use on the first chunk, via the state.
        difference = sum((a - b).abs().sum() for a, b in zip(params_grad, cut_params_grad, strict=True))
        assert difference > 0
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("passes", [2, 3])
def test_gradient_reaches_every_consolidation_pass(models, family, passes):
    """Record every call of the loop body's fast-weight modules; the calls of the first chunk's
    consolidation (pass 1..N, every Ouro step) must all receive gradient from the last chunk's loss:
    through the state they write, and (all but the last pass) through the hidden states they hand
    to the next pass."""
    model = models[family]
    stack = model.engine(passes=passes).stack
    modules = fast_weight_modules(stack.body)
    assert modules, "the loop body has no fast-weight block"
    calls: dict[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]] = {m: [] for m in modules}

    def record(module, inputs, output):
        hidden, state = output
        hidden.retain_grad()
        state.recurrent.retain_grad()
        calls[module].append((hidden, state.recurrent))

    handles = [m.register_forward_hook(record) for m in modules]
    try:
        loss, embeds = last_chunk_loss(model, random_ids(2, 2 * L + 5, seed=7), passes)
        loss.backward()
    finally:
        for handle in handles:
            handle.remove()
        model.zero_grad(set_to_none=True)
    per_chunk = passes * stack.steps_per_pass
    for module_calls in calls.values():
        # two context chunks consolidated with N passes, then one wake pass on the last chunk
        assert len(module_calls) == 2 * per_chunk + stack.steps_per_pass
        first_chunk = module_calls[:per_chunk]
        for call, (_, recurrent) in enumerate(first_chunk):
            assert recurrent.grad is not None and recurrent.grad.abs().sum() > 0, f"call {call}: state"
        for call, (hidden, _) in enumerate(first_chunk[: per_chunk - stack.steps_per_pass]):
            assert hidden.grad is not None and hidden.grad.abs().sum() > 0, f"call {call}: hidden states"


@pytest.mark.parametrize("family", FAMILIES)
def test_first_chunk_gradient_depends_on_the_number_of_passes(models, family):
    model = models[family]
    ids = random_ids(1, 2 * L + 5, seed=8)
    grads = []
    for passes in (2, 3):
        loss, embeds = last_chunk_loss(model, ids, passes)
        (embeds_grad,) = torch.autograd.grad(loss, embeds)
        grads.append(embeds_grad[:, :L])
    assert (grads[0] - grads[1]).abs().max() > 1e-6


# ------------------------------------------------------------ consolidation changes (or keeps) the state


@pytest.mark.parametrize("family", FAMILIES)
def test_n1_consolidation_reproduces_the_wake_state_exactly(models, family):
    engine = models[family].engine(passes=1)
    with torch.no_grad():
        embeds = engine.stack.embed(random_ids(2, 2 * L, seed=9))
        woken = SleepCache()  # every token wakes; N=1 keeps the wake state (no re-run)
        engine.forward(embeds, woken)
        slept = SleepCache()  # no outputs: context chunks, consolidated by one pass from the snapshot
        engine.forward(embeds, slept, output_positions=torch.zeros(2 * L, dtype=torch.bool))
    assert woken.stats["consolidations"] == 0 and slept.stats["consolidations"] == 2
    assert sorted(woken.states) == sorted(slept.states) and woken.states
    assert states_equal(woken.states, slept.states)


@pytest.mark.parametrize("family", FAMILIES)
def test_more_passes_change_the_state_and_later_outputs(models, family):
    model = models[family]
    ids = random_ids(2, 2 * L + 5, seed=11)
    caches, logits = {}, {}
    with torch.no_grad():
        for passes in (1, 3):
            caches[passes] = SleepCache()
            logits[passes] = model(ids, cache=caches[passes], passes=passes).logits
    # the first chunk's outputs come from the wake pass: the same for every N
    torch.testing.assert_close(logits[1][:, :L], logits[3][:, :L], atol=ATOL, rtol=ATOL)
    assert (logits[1][:, L:] - logits[3][:, L:]).abs().max() > 1e-3
    one, three = caches[1].states, caches[3].states
    changed = {k for k in one if not torch.allclose(one[k].recurrent, three[k].recurrent, atol=1e-5)}
    assert changed, "N=3 left every fast-weight state as N=1 did"
    if family == "jet_nemotron":
        # Layer 0's JetBlock is in the prefix, which runs once whatever N; layer 2's is in the body.
        assert changed == {"jet.2"}


@pytest.mark.parametrize("family", FAMILIES)
def test_sliding_consolidates_from_the_snapshot_like_hard(models, family):
    """Wake passes only update the state provisionally: each complete chunk is consolidated from
    its snapshot, within the chunk. So after whole chunks the states under sliding eviction are
    those under hard eviction, although sliding wake passes saw the previous window."""
    model = models[family]
    with torch.no_grad():
        embeds = model.engine().stack.embed(random_ids(2, 3 * L, seed=13))
        states = {}
        for eviction in ("hard", "sliding"):
            cache = SleepCache()
            model.engine(passes=3, eviction=eviction).forward(embeds, cache)
            states[eviction] = cache.states
    for key in states["hard"]:
        torch.testing.assert_close(states["sliding"][key].recurrent, states["hard"][key].recurrent)


# ------------------------------------------------------------ CUDA


@requires_cuda
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("eviction", ["hard", "sliding"])
def test_cuda_matches_cpu(models, family, eviction):
    model = models[family]
    ids = random_ids(2, 3 * L + 5, seed=12)
    with torch.no_grad():
        expected = model(ids, passes=3, eviction=eviction).logits
        cuda_model = copy.deepcopy(model).cuda()
        result = cuda_model(ids.cuda(), passes=3, eviction=eviction).logits.cpu()
    torch.testing.assert_close(result, expected, atol=1e-3, rtol=1e-3)


def test_consolidations_are_counted_always_and_timed_only_on_a_timed_cache(models):
    """The engine brackets each consolidation (cache.consolidating); the clock, which on CUDA
    synchronises the device, runs only for a cache made with timed=True (generate's report)."""
    ids = random_ids(1, 2 * L, seed=1)
    for timed in (False, True):
        cache = SleepCache(timed=timed)
        with torch.no_grad():
            models["llama"](ids, cache=cache, passes=2)
        assert cache.stats["consolidations"] == 2 and cache.stats["evictions"] == 2
        assert (cache.stats["consolidation_seconds"] > 0) == timed
