"""New weights without draining (``load_state_dict(drain=False)``, the ``model-server`` backend's default): staged
off the engine thread, swapped in between two decode steps; a running request goes on with the new weights, new
requests get them; bad weights change nothing; prompts kept from the old weights are not reused; staged tensors
are copies; tied weights stay tied."""

from __future__ import annotations

import threading

import pytest
import torch

from agl_model_server import ModelServer
from agl_model_server._engine import TokenEvent
from agl_model_server._sampling import SamplingParams
from agl_model_server._weights import WeightsError, stage_state_dict
from agl_model_server.testing import forward_logprobs, make_tiny_model, make_tiny_tokenizer

TOL = 1e-4


@pytest.mark.parametrize("decode", ["dynamic", "static"])
def test_a_swap_does_not_wait_for_the_running_request(decode: str) -> None:
    tokenizer = make_tiny_tokenizer()
    model = make_tiny_model(len(tokenizer))
    old = make_tiny_model(len(tokenizer))  # the same weights, kept aside
    new = make_tiny_model(len(tokenizer), seed=123)
    server = ModelServer(model=model, tokenizer=tokenizer, model_name="tiny", static_decode=decode == "static")
    server.start()
    try:
        events: list[TokenEvent] = []
        started, finished = threading.Event(), threading.Event()

        def sink(event: TokenEvent) -> None:
            events.append(event)
            if len(events) >= 5:
                started.set()
            if event.finish_reason is not None:
                finished.set()

        prompt = server.encode("one two three")
        version = server.weights_version
        params = SamplingParams(max_tokens=200, temperature=0, ignore_eos=True)
        server.engine.submit(prompt, params, sink)
        assert started.wait(60)
        new_version = server.load_state_dict(new.state_dict(), drain=False)
        at_return = len(events)
        assert finished.wait(120)

        assert new_version == version + 1
        assert at_return < 200, "the swap waited for the running request to finish"
        assert len(events) == 200 and events[-1].finish_reason == "length"
        assert {e.weights_version for e in events} == {version}  # the version it started with
        tokens = [e.token_id for e in events]
        # the tokens before the swap are the old weights' own; the last ones are not: the request went on with the
        # new weights (over the cache the old ones computed)
        reference = forward_logprobs(old, prompt, tokens)
        before = 4  # at least these were generated before the swap was asked for
        assert [e.model_logprob for e in events[:before]] == pytest.approx(reference[:before], abs=TOL)
        assert abs(events[-1].model_logprob - reference[-1]) > 1e-2
        # a new request runs on the new weights, under the new version
        out = server.generate(prompt, max_tokens=6, temperature=0)
        assert out["weights_version"] == version + 1
        assert out["model_logprobs"] == pytest.approx(forward_logprobs(new, prompt, out["token_ids"]), abs=TOL)

        # weights that do not fit: an error at once, on the caller's thread; nothing changed
        with pytest.raises(WeightsError, match="wrong shape"):
            server.load_state_dict({"lm_head.weight": torch.zeros(3, 3)}, partial=True, drain=False)
        assert server.weights_version == version + 1
        again = server.generate(prompt, max_tokens=6, temperature=0)
        assert again["token_ids"] == out["token_ids"]
    finally:
        server.stop()


def test_prompts_kept_from_the_old_weights_are_not_reused_after_a_swap() -> None:
    """The static path copies the start a new prompt shares with one admitted earlier; a swap makes those keys and
    values stale, so the first request after it runs its whole prompt on the new weights."""
    tokenizer = make_tiny_tokenizer()
    model = make_tiny_model(len(tokenizer))
    new = make_tiny_model(len(tokenizer), seed=123)
    server = ModelServer(model=model, tokenizer=tokenizer, model_name="tiny", static_decode=True)
    server.start()
    try:
        start = server.encode("one two three four five six seven eight nine ten eleven twelve")
        first, second = start + server.encode(" alpha"), start + server.encode(" beta")
        server.generate(first, max_tokens=3, temperature=0)
        reused = server.engine.stats()["prefix_reused_tokens"]
        out = server.generate(second, max_tokens=3, temperature=0)
        assert server.engine.stats()["prefix_reused_tokens"] > reused  # the common start was copied
        server.load_state_dict(new.state_dict(), drain=False)
        reused = server.engine.stats()["prefix_reused_tokens"]
        out = server.generate(second, max_tokens=6, temperature=0)
        assert server.engine.stats()["prefix_reused_tokens"] == reused
        assert out["model_logprobs"] == pytest.approx(forward_logprobs(new, second, out["token_ids"]), abs=TOL)
        # Stopped, the model changes in place without a command; started again, nothing kept from before is used.
        server.engine.stop()
        with server.paused():
            model.load_state_dict(make_tiny_model(len(tokenizer), seed=7).state_dict())
        server.engine.start()
        out = server.generate(first, max_tokens=6, temperature=0)
        assert out["model_logprobs"] == pytest.approx(forward_logprobs(model, first, out["token_ids"]), abs=TOL)
    finally:
        server.stop()


def test_staged_weights_are_copies_and_tied_weights_stay_tied() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    torch.manual_seed(1)
    source = LlamaForCausalLM(config)
    wanted = {k: v.detach().clone() for k, v in source.state_dict().items()}
    state = {k: v.detach().clone() for k, v in source.state_dict().items()}  # both tied names, as a trainer sends

    staged = stage_state_dict(model, state)
    assert len(staged) == len(dict(model.named_parameters()))  # the tied weight is staged once
    for tensor in state.values():
        tensor.zero_()  # the trainer goes on changing its tensors: the staged copies do not follow
    assert staged.swap() == len(dict(model.named_parameters()))
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still one parameter
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, wanted[name]), name

    # in place: the same tensors (what a CUDA graph captured) get the new values
    pointers = {name: p.data_ptr() for name, p in model.named_parameters()}
    back = {k: v * 2 for k, v in wanted.items()}
    stage_state_dict(model, back).swap(in_place=True)
    assert {name: p.data_ptr() for name, p in model.named_parameters()} == pointers
    assert torch.equal(model.lm_head.weight, back["lm_head.weight"])

    with pytest.raises(WeightsError, match="missing"):
        stage_state_dict(model, {"lm_head.weight": back["lm_head.weight"]})
    assert torch.equal(model.lm_head.weight, back["lm_head.weight"])
