"""``fx_passes.reinplace_guard``: a decode op's result that its input's write-back would overwrite
keeps its own memory, so two steps with a snapshot between them compile to what eager computes."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
import torch._inductor.config as inductor_config
from fx_models import (
    DEVICE,
    CapturePostPassGraph,
    SnapshotCase,
    needs_expecttest,
    pass_compile_context,
    tiny_qwen3_next,
)

import gdn_ops

B, HK, HV, K, V = 2, 1, 2, 8, 8


def _inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen).to(DEVICE)
    return {"pool": r(B, HV, K, V), "snapshot": r(B, HV, K, V), "q": r(B, 1, HK, K), "k": r(B, 1, HK, K),
            "v": r(B, 1, HV, V), "g": -torch.rand(B, 1, HV, generator=gen).to(DEVICE),
            "beta": torch.rand(B, 1, HV, generator=gen).to(DEVICE)}


def _step(pool, q, k, v, g, beta):
    return gdn_ops.recurrent_gated_delta_rule_update(q, k, v, g, beta, pool, None, state_layout="kv")


def _snapshot_after(steps: int, name: str):
    """``steps`` steps, the state cloned (a rollback point), one more step; the clone returned."""

    def fn(pool, snapshot, q, k, v, g, beta):
        for _ in range(steps):
            _step(pool, q, k, v, g, beta)
        taken = pool.clone()
        _step(pool, q, k, v, g, beta)
        return taken

    fn.__name__ = name
    return fn


snapshot_returned = _snapshot_after(1, "snapshot_returned")
# its input came from the first step's result
snapshot_after_the_second = _snapshot_after(2, "snapshot_after_the_second")


def snapshot_copied(pool, snapshot, q, k, v, g, beta):
    """One step, the state copied into another input (not returned), one more step."""
    _step(pool, q, k, v, g, beta)
    snapshot.copy_(pool)
    return _step(pool, q, k, v, g, beta)


def two_steps(pool, snapshot, q, k, v, g, beta):
    """Two steps and nothing read between them: no copy is needed."""
    _step(pool, q, k, v, g, beta)
    return _step(pool, q, k, v, g, beta)


def one_step(pool, snapshot, q, k, v, g, beta):
    return _step(pool, q, k, v, g, beta)


@pytest.mark.parametrize(("fn", "copies"), [(snapshot_returned, 1), (snapshot_copied, 1), (snapshot_after_the_second, 1),
                                            (two_steps, 0), (one_step, 0)],
                         ids=lambda x: getattr(x, "__name__", str(x)))
def test_compiled_steps_match_eager(fn, copies, caplog):
    """Without the guard PyTorch 2.13 runs the first step in the pool's memory and the snapshot
    reads the second step's state."""
    eager, compiled = _inputs(), _inputs()
    with torch.no_grad():
        expected = fn(**eager)
    with pass_compile_context(), caplog.at_level(logging.INFO, logger="gdn_ops.fx_passes"):
        actual = torch.compile(fn)(**compiled)
    for name in ("pool", "snapshot"):
        torch.testing.assert_close(compiled[name], eager[name], rtol=1e-5, atol=1e-6, msg=name)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)
    assert sum("reinplace guard" in r.getMessage() for r in caplog.records) == copies


def test_model_checkpoint_between_two_decode_tokens():
    """A tiny Qwen3-Next decoding two tokens in one compiled function, its first linear layer's
    state cloned between them: the rewritten recurrence must leave the clone the first token's state."""
    pytest.importorskip("transformers")
    from transformers.cache_utils import StaticCache

    config, model = tiny_qwen3_next()

    def two_tokens(first, second, cache):
        model(input_ids=first, past_key_values=cache, use_cache=True)
        checkpoint = cache.layers[0].recurrent_states[0].clone()
        model(input_ids=second, past_key_values=cache, use_cache=True)
        return checkpoint

    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        cache = StaticCache(config=config, max_cache_len=16)
        model(input_ids=torch.randint(0, config.vocab_size, (2, 5), generator=gen).to(DEVICE), past_key_values=cache,
              use_cache=True)
        first, second = (torch.randint(0, config.vocab_size, (2, 1), generator=gen).to(DEVICE) for _ in range(2))
        eager_cache = copy.deepcopy(cache)
        expected = two_tokens(first, second, eager_cache)
        assert not torch.allclose(expected, eager_cache.layers[0].recurrent_states[0])  # the test can fail
    with pass_compile_context():
        actual = torch.compile(two_tokens)(first, second, cache)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cache.layers[0].recurrent_states[0], eager_cache.layers[0].recurrent_states[0],
                               rtol=1e-5, atol=1e-6)


@needs_expecttest
class TestGuardedGraph(SnapshotCase):
    def test_the_first_step_runs_on_a_copy(self):
        capture = CapturePostPassGraph()
        torch._dynamo.reset()
        with inductor_config.patch(force_disable_caches=True, post_grad_custom_post_pass=capture), torch.no_grad():
            torch.compile(snapshot_returned)(**_inputs())
        self.assertExpectedInline(capture.texts[0], """\
n0 = aten.empty.memory_format([2, 1, 2, 8], dtype=float32)
n1 = aten.clone.default(in0)
n2 = auto_functionalized_v2(gdn_ops.recurrent_gated_delta_rule_update.default, q=q, k=k, v=v, g=g, beta=beta, initial_state_indices=None, scale=None, use_qk_l2norm_in_kernel=False, state_layout='kv', initial_state_order=None, _initial_state_source_base_index=0, _out_base_index=1, _all_bases=[n1, n0])
n3 = getitem(n2, 1)
n4 = aten.empty.memory_format([2, 1, 2, 8], dtype=float32)
n5 = auto_functionalized_v2(gdn_ops.recurrent_gated_delta_rule_update.default, q=q, k=k, v=v, g=g, beta=beta, initial_state_indices=None, scale=None, use_qk_l2norm_in_kernel=False, state_layout='kv', initial_state_order=None, _initial_state_source_base_index=0, _out_base_index=1, _all_bases=[n3, n4])
n6 = getitem(n5, 1)
n7 = aten.copy_.default(in0, n6)
return [n3]""")
