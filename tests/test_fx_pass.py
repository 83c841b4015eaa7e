"""The pass as users meet it: install/uninstall/scoped forms, counters and logs, cache identity,
graph snapshots, dynamic batch, and Inductor's FX graph cache across processes."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
import torch._inductor.config as inductor_config
from fx_models import (
    CapturePostPassGraph,
    SnapshotCase,
    assert_close,
    clone_inputs,
    decode_inputs,
    gating_hf,
    l2norm_fp32,
    needs_expecttest,
)
from torch._inductor.custom_graph_pass import CustomGraphPass

import fx_passes
import gdn_ops
from fx_passes import gdn_pass

TESTS_DIR = pathlib.Path(__file__).resolve().parent


def gated_decode(q, k, v, a, b, A_log, dt_bias, pool, idx):
    """PyTorch gating and q/k norm, then the unfused op: two rewrites apply."""
    g, beta = gating_hf(A_log, a, dt_bias, b)
    return gdn_ops.recurrent_gated_delta_rule_update(l2norm_fp32(q), l2norm_fp32(k), v, g, beta, pool, idx)


class RecordingPass(CustomGraphPass):
    def __init__(self, uid="recorder-v1"):
        self.calls, self.uid = 0, uid

    def __call__(self, graph):
        self.calls += 1

    def uuid(self):
        return self.uid


@pytest.fixture
def clean_config():
    with inductor_config.patch(post_grad_custom_post_pass=None):
        yield


# --------------------------------------------------------------------------------------------
# enabling
# --------------------------------------------------------------------------------------------


def test_install_is_idempotent_and_uninstall_restores_the_previous_pass(clean_config):
    previous = RecordingPass()
    inductor_config.post_grad_custom_post_pass = previous
    installed = fx_passes.install()
    assert fx_passes.install() is installed
    assert inductor_config.post_grad_custom_post_pass is installed
    assert installed.previous is previous and fx_passes.is_installed()
    assert fx_passes.uninstall() is True
    assert inductor_config.post_grad_custom_post_pass is previous
    assert fx_passes.uninstall() is False
    assert not fx_passes.is_installed()


def test_a_chained_pass_runs_first_on_every_graph_and_enters_the_uuid(clean_config):
    previous = RecordingPass()
    chained = fx_passes.GDNFusionPass(previous=previous)
    graph = torch.fx.Graph()
    graph.output(())
    chained(torch.fx.GraphModule(torch.nn.Module(), graph).graph)
    assert previous.calls == 1
    alone = fx_passes.GDNFusionPass().uuid()
    assert chained.uuid() not in (None, alone)
    assert chained.uuid() != fx_passes.GDNFusionPass(previous=RecordingPass("recorder-v2")).uuid()
    # a pass without a uuid makes the chain uncacheable, as it would be on its own
    assert fx_passes.GDNFusionPass(previous=lambda g: None).uuid() is None
    # torch >= 2.12 allows a list in the slot
    assert fx_passes.GDNFusionPass(previous=[previous, RecordingPass("x")]).uuid() is not None


def test_scoped_forms_leave_the_global_config_alone(clean_config):
    with fx_passes.enabled():
        assert fx_passes.is_installed()
    assert inductor_config.post_grad_custom_post_pass is None
    options = fx_passes.inductor_options()
    assert isinstance(options["post_grad_custom_post_pass"], fx_passes.GDNFusionPass)
    assert inductor_config.post_grad_custom_post_pass is None


def test_compile_options_recipe_logs_each_rewrite_and_counts(clean_config, caplog):
    inputs = decode_inputs(dtype=torch.bfloat16)
    eager = clone_inputs(inputs)
    torch._dynamo.reset()
    fx_passes.reset_counts()
    torch._dynamo.utils.counters["gdn_ops"].clear()
    compiled = torch.compile(gated_decode, options=fx_passes.inductor_options())
    assert inductor_config.post_grad_custom_post_pass is None
    with caplog.at_level(logging.INFO, logger=fx_passes.LOGGER_NAME), torch.no_grad(), \
            inductor_config.patch(force_disable_caches=True):
        out = compiled(**inputs)
        expected = gated_decode(**eager)
    assert fx_passes.last_counts() == {"hf_recurrence": 0, "qk_l2norm": 1, "gating": 1, "key_heads": 0,
                                      "slot_order": 0}
    assert fx_passes.total_counts() == {"qk_l2norm": 1, "gating": 1}
    assert dict(torch._dynamo.utils.counters["gdn_ops"]) == {"qk_l2norm": 1, "gating": 1}
    messages = [r.getMessage() for r in caplog.records if r.name == fx_passes.LOGGER_NAME and r.levelno == logging.INFO]
    assert len(messages) == 2
    assert any(m.startswith("qk_l2norm:") for m in messages) and any(m.startswith("gating:") for m in messages)
    assert_close(out, expected, torch.bfloat16)
    fx_passes.reset_counts()
    assert fx_passes.last_counts() == {} and fx_passes.total_counts() == {}


# --------------------------------------------------------------------------------------------
# cache identity
# --------------------------------------------------------------------------------------------


def test_uuid_tracks_pass_sources_and_versions(tmp_path, monkeypatch):
    gdn_pass.fingerprint.cache_clear()
    try:
        base = fx_passes.GDNFusionPass().uuid()
        assert base == fx_passes.GDNFusionPass().uuid()

        copy = tmp_path / "fx_passes"
        shutil.copytree(gdn_pass._PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
        monkeypatch.setattr(gdn_pass, "_PACKAGE_DIR", copy)
        gdn_pass.fingerprint.cache_clear()
        assert fx_passes.GDNFusionPass().uuid() == base  # same sources, same identity
        pattern = copy / "patterns" / "torch_gating_into_recurrent_op.py"
        pattern.write_text(pattern.read_text() + "\n# edited\n")
        gdn_pass.fingerprint.cache_clear()
        edited = fx_passes.GDNFusionPass().uuid()
        assert edited != base

        traced = tmp_path / "modeling_qwen3_next.py"
        traced.write_text("def torch_recurrent_gated_delta_rule(): ...\n")
        monkeypatch.setattr(gdn_pass, "_traced_model_files", lambda: [traced])
        gdn_pass.fingerprint.cache_clear()
        with_model = fx_passes.GDNFusionPass().uuid()
        traced.write_text("def torch_recurrent_gated_delta_rule(): return 1\n")
        gdn_pass.fingerprint.cache_clear()
        assert fx_passes.GDNFusionPass().uuid() not in (with_model, edited)

        monkeypatch.setattr(torch, "__version__", "0.0.0-test")
        gdn_pass.fingerprint.cache_clear()
        bumped = fx_passes.GDNFusionPass().uuid()
        monkeypatch.setattr(gdn_ops, "__version__", "0.0.0-test")
        gdn_pass.fingerprint.cache_clear()
        assert fx_passes.GDNFusionPass().uuid() != bumped
    finally:
        monkeypatch.undo()
        gdn_pass.fingerprint.cache_clear()


_CACHE_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    import fx_passes, gdn_ops
    from torch._dynamo.utils import counters
    from fx_models import clone_inputs, decode_inputs
    from test_fx_pass import gated_decode

    fx_passes.install()
    inputs = decode_inputs(dtype=torch.bfloat16)
    eager = clone_inputs(inputs)
    with torch.no_grad():
        compiled = torch.compile(gated_decode)
        out = compiled(**inputs)
        expected = gated_decode(**eager)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            compiled(**inputs)
    ops = [e.name for e in prof.events() if e.name.startswith("gdn_ops::")]
    print(json.dumps({
        "fx_hits": counters["inductor"]["fxgraph_cache_hit"],
        "aot_hits": counters["aot_autograd"]["autograd_cache_hit"],
        "pass_counts": fx_passes.total_counts(),
        "fused_calls": ops.count("gdn_ops::fused_sigmoid_gating_delta_rule_update"),
        "unfused_calls": ops.count("gdn_ops::recurrent_gated_delta_rule_update"),
        "max_err": (out.float() - expected.float()).abs().max().item(),
    }))
    """
)


def test_a_second_process_hits_the_fx_graph_cache_and_runs_fused_code(tmp_path):
    script = tmp_path / "compile_once.py"
    script.write_text(_CACHE_SCRIPT)
    env = {
        **os.environ,
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor_cache"),
        "TORCHINDUCTOR_FX_GRAPH_CACHE": "1",
        "TORCHINDUCTOR_FORCE_DISABLE_CACHES": "0",
        "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), str(TESTS_DIR.parent), os.environ.get("PYTHONPATH", "")]),
    }

    def run():
        proc = subprocess.run([sys.executable, str(script)], check=False, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    first, second = run(), run()
    assert first["pass_counts"] == {"qk_l2norm": 1, "gating": 1}
    assert first["fx_hits"] + first["aot_hits"] == 0
    assert second["fx_hits"] + second["aot_hits"] >= 1
    assert second["pass_counts"] == {}  # the pass did not run: the cached code was served
    for result in (first, second):
        assert (result["fused_calls"], result["unfused_calls"]) == (1, 0)
        assert result["max_err"] < 3e-2


# --------------------------------------------------------------------------------------------
# dynamic batch
# --------------------------------------------------------------------------------------------


def test_dynamic_batch_compiles_once_for_batch_1_to_9():
    backed_size_oblivious = hasattr(torch.fx.experimental._config, "backed_size_oblivious")
    sizes = list(range(1, 10)) if backed_size_oblivious else list(range(2, 10))
    pool = decode_inputs(dtype=torch.bfloat16, slots=12)["pool"]
    compiled = torch.compile(gated_decode)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    fx_passes.reset_counts()
    patches = {"backed_size_oblivious": True} if backed_size_oblivious else {}
    with inductor_config.patch(force_disable_caches=True), fx_passes.enabled(), torch.no_grad(), \
            torch.fx.experimental._config.patch(**patches):
        for B in sizes:
            x = decode_inputs(B=B, dtype=torch.bfloat16, slots=12, seed=B)
            x["pool"] = pool
            for name in ("q", "k", "v", "a", "b", "idx"):
                torch._dynamo.mark_dynamic(x[name], 0)
            eager = clone_inputs(x)
            out = compiled(**x)
            assert_close(out, gated_decode(**eager), torch.bfloat16)
            assert_close(x["pool"], eager["pool"], torch.bfloat16)
            pool = x["pool"]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert fx_passes.total_counts() == {"qk_l2norm": 1, "gating": 1}


# --------------------------------------------------------------------------------------------
# post-pass graph snapshots
# --------------------------------------------------------------------------------------------


@needs_expecttest
class TestPostPassGraph(SnapshotCase):
    def capture(self, fn, **inputs):
        capture = CapturePostPassGraph()
        torch._dynamo.reset()
        with inductor_config.patch(force_disable_caches=True, post_grad_custom_post_pass=capture), torch.no_grad():
            torch.compile(fn)(**inputs)
        self.assertEqual(len(capture.texts), 1)
        return capture.texts[0]

    def test_gating_and_l2norm_model(self):
        text = self.capture(gated_decode, **decode_inputs(B=2, dtype=torch.bfloat16))
        self.assertExpectedInline(text, """\
n0 = aten.empty.memory_format([2, 1, 4, 8], dtype=bfloat16)
n1 = auto_functionalized_v2(gdn_ops.fused_sigmoid_gating_delta_rule_update.default, A_log=A_log, a=a, dt_bias=dt_bias, softplus_beta=1, softplus_threshold=20, q=q, k=k, v=v, initial_state_indices=initial_state_indices, scale=None, use_qk_l2norm_in_kernel=True, state_layout='vk', initial_state_order=None, _initial_state_source_base_index=0, _out_base_index=1, _all_bases=[initial_state_source, n0], b=b)
n2 = getitem(n1, 1)
n3 = getitem(n1, 2)
n4 = aten.copy_.default(initial_state_source, n2)
return [n3]""")

    def test_repeated_key_heads(self):
        def fused_on_repeated(q, k, v, a, b, A_log, dt_bias, pool, idx):
            return gdn_ops.fused_sigmoid_gating_delta_rule_update(
                A_log, a, dt_bias, 1.0, 20.0, q.repeat_interleave(2, dim=2), k.repeat_interleave(2, dim=2), v, b,
                pool, idx, use_qk_l2norm_in_kernel=True
            )

        text = self.capture(fused_on_repeated, **decode_inputs(B=2, dtype=torch.float32, HK=2, HV=4))
        self.assertExpectedInline(text, """\
n0 = aten.empty.memory_format([2, 1, 4, 8], dtype=float32)
n1 = auto_functionalized_v2(gdn_ops.fused_sigmoid_gating_delta_rule_update.default, A_log=A_log, a=a, dt_bias=dt_bias, softplus_beta=1, softplus_threshold=20, q=q, k=k, v=v, b=b, initial_state_indices=initial_state_indices, scale=None, use_qk_l2norm_in_kernel=True, state_layout='vk', initial_state_order=None, _initial_state_source_base_index=0, _out_base_index=1, _all_bases=[initial_state_source, n0])
n2 = getitem(n1, 1)
n3 = getitem(n1, 2)
n4 = aten.copy_.default(initial_state_source, n2)
return [n3]""")

    def test_transformers_decode_step(self):
        # the same graph under 5.17, whose module repeats the key heads before the recurrence (the
        # pass hands the op the heads themselves), and 5.24, whose recurrence repeats them
        pytest.importorskip("transformers")
        from test_fx_hf_recurrence import hf_inputs, hf_layer

        text = self.capture(hf_layer(), **hf_inputs(torch.float32, 2, 4, B=2))
        self.assertExpectedInline(text, """\
n0 = aten.empty_strided.default([2, 1, 4, 8], [32, 8, 8, 1], dtype=float32)
n1 = auto_functionalized_v2(gdn_ops.fused_sigmoid_gating_delta_rule_update.default, A_log=A_log, a=a, dt_bias=dt_bias, softplus_beta=1, softplus_threshold=20, q=q, k=k, v=v, initial_state_indices=None, scale=0.353553, use_qk_l2norm_in_kernel=True, state_layout='kv', _initial_state_source_base_index=0, _out_base_index=1, _all_bases=[initial_state_source, n0], b=b)
n2 = getitem(n1, 1)
n3 = getitem(n1, 2)
n4 = aten.copy_.default(initial_state_source, n2)
return [n3]""")


def test_inductor_options_with_cudagraphs_is_reduce_overhead_plus_the_pass():
    plain, graphs = fx_passes.inductor_options(), fx_passes.inductor_options(cudagraphs=True)
    assert "triton.cudagraphs" not in plain
    assert graphs["triton.cudagraphs"] is True
    assert isinstance(graphs["post_grad_custom_post_pass"], fx_passes.GDNFusionPass)


def _copy_back_graph(read_after: str | None) -> tuple[torch.fx.Graph, torch.fx.Node]:
    """``x.copy_(y * 2)`` into a graph input, then ``y + 1``, optionally after reading ``x`` again."""
    aten = torch.ops.aten
    x_val, y_val = torch.randn(4), torch.randn(4)
    g = torch.fx.Graph()
    x, y = g.placeholder("x"), g.placeholder("y")
    x.meta["val"], y.meta["val"] = x_val, y_val
    new = g.call_function(aten.mul.Tensor, (y, 2))
    new.meta["val"] = y_val * 2
    copy = g.call_function(aten.copy_.default, (x, new))
    copy.meta["val"] = x_val
    outs = [g.call_function(aten.add.Tensor, (y, 1))]
    outs[0].meta["val"] = y_val + 1
    if read_after == "input":
        outs.append(g.call_function(aten.add.Tensor, (x, 1)))
        outs[-1].meta["val"] = x_val + 1
    elif read_after == "view":
        outs.append(g.call_function(aten.view.default, (x, [2, 2])))
        outs[-1].meta["val"] = x_val.view(2, 2)
    g.output(tuple(outs))
    return g, copy


@pytest.mark.parametrize("read_after", [None, "input", "view"])
def test_sink_input_copies_moves_a_write_back_only_when_nothing_later_reads_the_input(read_after):
    from fx_passes.gdn_pass import sink_input_copies

    g, copy = _copy_back_graph(read_after)
    moved = sink_input_copies(g)
    g.lint()
    if read_after is None:
        assert moved == 1 and copy.next.op == "output"
    else:
        assert moved == 0 and copy.next.op != "output"
