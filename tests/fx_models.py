"""Shared pieces of the fx_passes tests: decode-step models, inputs, compiling, reading generated code."""

from __future__ import annotations

import contextlib
import re
import unittest
from collections.abc import Callable
from typing import Any

import torch
import torch._inductor.config as inductor_config
import torch.nn.functional as F
from torch._inductor.custom_graph_pass import CustomGraphPass
from torch._inductor.utils import run_and_get_code

import fx_passes
import gdn_ops

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FUSED = "fused_sigmoid_gating_delta_rule_update"
RECURRENT = "recurrent_gated_delta_rule_update"
# positional index of initial_state_source / use_qk_l2norm_in_kernel / state_layout in each op
STATE_ARG = {FUSED: 9, RECURRENT: 5}
L2NORM_ARG = {FUSED: 12, RECURRENT: 8}
LAYOUT_ARG = {FUSED: 13, RECURRENT: 9}
QK_ARGS = {FUSED: (5, 6), RECURRENT: (0, 1)}

# compiled vs eager: the fused kernel keeps the gates in fp32 where the unfused PyTorch code may
# round them to the activation dtype, so half-precision cases get half-precision tolerances.
TOL = {
    torch.float32: {"atol": 2e-5, "rtol": 2e-5},
    torch.bfloat16: {"atol": 3e-2, "rtol": 3e-2},
    torch.float16: {"atol": 5e-3, "rtol": 5e-3},
}


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------


def decode_inputs(B=3, T=1, HK=2, HV=4, K=8, V=8, dtype=torch.bfloat16, layout="vk", slots=7, seed=0):
    """Inputs of one decode call on a pool of ``slots`` slots (rows read distinct slots)."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, dt=dtype, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(dt).to(DEVICE)

    inner = (V, K) if layout == "vk" else (K, V)
    return {
        "q": rnd(B, T, HK, K),
        "k": rnd(B, T, HK, K),
        "v": rnd(B, T, HV, V),
        "a": rnd(B, T, HV),
        "b": rnd(B, T, HV),
        "A_log": rnd(HV, scale=0.5),
        "dt_bias": rnd(HV, scale=0.5),
        "pool": rnd(slots, HV, *inner, dt=torch.float32, scale=0.1),
        "idx": torch.randperm(slots, generator=gen)[:B].to(torch.int32).to(DEVICE),
    }


def clone_inputs(inputs: dict) -> dict:
    return {k: v.clone() for k, v in inputs.items()}


# --------------------------------------------------------------------------------------------
# the PyTorch pieces the patterns look for
# --------------------------------------------------------------------------------------------


def gating_hf(A_log, a, dt_bias, b):
    """As Qwen3-Next / Qwen3.5 modules in transformers write it."""
    beta = b.sigmoid()
    g = -A_log.float().exp() * F.softplus(a.float() + dt_bias)
    return g, beta


def gating_reference(A_log, a, dt_bias, b):
    """The package's own fp32 reference (explicit casts everywhere, explicit softplus args)."""
    return gdn_ops.gdn_gating_reference(A_log, a, dt_bias, b, 1.0, 20.0)


def gating_scaled_commuted(A_log, a, dt_bias, b):
    """Softplus with beta/threshold other than the defaults, product written the other way round."""
    g = F.softplus(a.float() + dt_bias.float(), beta=2.0, threshold=15.0) * -torch.exp(A_log.float())
    return g, torch.sigmoid(b.float())


def gating_other_orders(A_log, a, dt_bias, b):
    """The sum written bias first and the minus sign on the product."""
    return -(A_log.float().exp() * F.softplus(dt_bias + a.float())), b.sigmoid()


def gating_op(A_log, a, dt_bias, b):
    return gdn_ops.gdn_gating(A_log, a, dt_bias, b)


def gating_same_dtype(A_log, a, dt_bias, b):
    """No casts at all: everything in the activation dtype."""
    return -A_log.exp() * F.softplus(a + dt_bias), b.sigmoid()


def l2norm_rsqrt(x, eps=1e-6):
    """transformers' / FLA's l2norm."""
    return x * torch.rsqrt((x * x).sum(dim=-1, keepdim=True) + eps)


def l2norm_div(x, eps=1e-6):
    return x / torch.sqrt(x.pow(2).sum(-1, keepdim=True) + eps)


def l2norm_rsqrt_first(x, eps=1e-6):
    """The factor first and the last dim of the 4-D q/k named by its index."""
    return torch.rsqrt((x * x).sum(3, keepdim=True) + eps) * x


def l2norm_fp32(x, eps=1e-6):
    return l2norm_rsqrt(x.float(), eps).to(x.dtype)


# --------------------------------------------------------------------------------------------
# compiling and reading the generated code
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def pass_compile_context():
    """Fresh dynamo state, no Inductor caches (a cache hit would skip the pass), pass on, no grad."""
    torch._dynamo.reset()
    fx_passes.reset_counts()
    with inductor_config.patch(force_disable_caches=True), fx_passes.enabled(), torch.no_grad():
        yield


def compile_and_run(fn: Callable, *args, **kwargs) -> tuple[Any, str, dict]:
    """Compile ``fn`` with the pass and call it once: ``(result, generated code, match counts)``."""
    with pass_compile_context():
        result, codes = run_and_get_code(torch.compile(fn), *args, **kwargs)
    return result, "\n".join(codes), fx_passes.total_counts()


def run_both(fn, inputs):
    """Eager on cloned inputs, then compiled with the pass: (actual, expected, inputs, eager_inputs, code, counts)."""
    eager_inputs = clone_inputs(inputs)
    with torch.no_grad():
        expected = fn(**eager_inputs)
    actual, code, counts = compile_and_run(fn, **inputs)
    return actual, expected, inputs, eager_inputs, code, counts


def _split_args(text: str) -> list[str]:
    """Split a call's argument text at the commas outside brackets."""
    args, depth, current = [], 0, ""
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            args.append(current.strip())
            current = ""
        else:
            current += ch
    if current.strip():
        args.append(current.strip())
    return args


def op_calls(code: str, op: str) -> list[list[str]]:
    """Argument lists (as source text) of every call of ``torch.ops.gdn_ops.<op>`` in the code."""
    return [_split_args(m.group(1)) for m in re.finditer(rf"torch\.ops\.gdn_ops\.{op}\.default\((.*)\)", code)]


def lines_touching(code: str, name: str) -> list[str]:
    """Generated-code lines that use buffer/input ``name``, less bookkeeping (asserts, del)."""
    out = []
    for line in code.splitlines():
        s = line.strip()
        if not re.search(rf"\b{re.escape(name)}\b", s):
            continue
        if s.startswith(("assert_size_stride", "assert_alignment", "del ", "#")) or re.match(rf"^{name}\s*(,|=)", s):
            continue
        if re.match(r"^(\w+\s*,\s*)*\w+\s*=\s*args$", s):
            continue
        if "rand_strided" in s or s.startswith(("return [", "def ")):
            continue
        out.append(s)
    return out


def assert_state_written_only_by(code: str, op: str, expected_calls: int) -> list[list[str]]:
    """The generated code calls ``op`` ``expected_calls`` times, each on a graph input (the user's
    own state buffer, not a copy), and nothing else reads or writes those inputs."""
    calls = op_calls(code, op)
    assert len(calls) == expected_calls, f"expected {expected_calls} calls of {op}, got {len(calls)}:\n{code}"
    for args in calls:
        state = args[STATE_ARG[op]]
        assert re.fullmatch(r"arg\d+_\d+", state), f"{op} updates {state}, not a graph input (a copy of the state?)"
        others = [line for line in lines_touching(code, state) if f"gdn_ops.{op}" not in line]
        assert not others, f"the state {state} is also touched by:\n" + "\n".join(others)
    return calls


def assert_qk_read_in_place(code: str) -> None:
    """Every decode call reads q and k as graph inputs (or views of them), not as buffers the
    compiled code fills first: a rewrite that hands an op other q and k must leave Inductor no
    record of the old ones' layout to copy the new ones into."""
    for op, positions in QK_ARGS.items():
        for args in op_calls(code, op):
            for i in positions:
                assert re.fullmatch(r"(reinterpret_tensor\()?arg\d+_\d+\b.*", args[i]), f"{op} reads {args[i]}:\n{code}"


def assert_close(actual, expected, dtype) -> None:
    torch.testing.assert_close(actual.float(), expected.float(), **TOL[dtype])


# --------------------------------------------------------------------------------------------
# post-pass graph snapshots
# --------------------------------------------------------------------------------------------

try:
    import expecttest

    SnapshotCase: type = expecttest.TestCase
except ImportError:  # the GPU machines may lack it
    expecttest = None
    SnapshotCase = unittest.TestCase

#: skips a snapshot test class where expecttest is missing
needs_expecttest = unittest.skipIf(expecttest is None, "expecttest is not installed")



class CapturePostPassGraph(CustomGraphPass):
    """Run the fusion pass, then keep a version-neutral text of the graph it produced."""

    def __init__(self) -> None:
        self.inner = fx_passes.GDNFusionPass()
        self.texts: list[str] = []

    def __call__(self, graph: torch.fx.Graph, is_inference: bool = True) -> None:
        self.inner(graph, is_inference=is_inference)
        self.texts.append(format_graph(graph))

    def uuid(self) -> None:
        return None


def _target_name(target: Any) -> str:
    if isinstance(target, torch._ops.OpOverload):
        return f"{target.namespace}.{target._opname}.{target._overloadname}"
    if isinstance(target, torch._ops.HigherOrderOperator):
        return target.name()
    return getattr(target, "__name__", str(target))


def _placeholder_roles(graph: torch.fx.Graph) -> dict[torch.fx.Node, str]:
    """Name graph inputs by the op argument they feed (``A_log``, ``initial_state_source``...).

    Torch releases order a graph's placeholders differently (2.11 and 2.13 differ), so names by
    position would make the snapshots version-dependent.
    """
    roles: dict[torch.fx.Node, str] = {}
    for node in graph.nodes:
        bases = node.kwargs.get("_all_bases")
        for key, val in node.kwargs.items():
            if isinstance(val, torch.fx.Node) and val.op == "placeholder":
                roles.setdefault(val, key)
            elif key.startswith("_") and key.endswith("_base_index") and bases is not None and isinstance(val, int):
                base = bases[val]
                if isinstance(base, torch.fx.Node) and base.op == "placeholder":
                    roles.setdefault(base, key[1:-len("_base_index")])
    return roles


def format_graph(graph: torch.fx.Graph) -> str:
    """Inputs named by role (else in0..), nodes renamed in order (n0..), devices and layouts dropped."""
    names: dict[torch.fx.Node, str] = dict(_placeholder_roles(graph))
    lines = []

    def fmt(a: Any) -> str:
        if isinstance(a, torch.fx.Node):
            return names[a]
        if isinstance(a, (list, tuple)):
            inner = ", ".join(fmt(x) for x in a)
            return f"[{inner}]"
        if isinstance(a, torch.device):
            return "DEVICE"
        if isinstance(a, torch.dtype):
            return str(a).replace("torch.", "")
        if isinstance(a, torch._ops.OpOverload):
            return _target_name(a)
        if isinstance(a, float):
            return f"{a:.6g}"
        return repr(a)

    n_in = n_op = 0
    for node in graph.nodes:
        if node.op == "placeholder":
            if node not in names:
                names[node] = f"in{n_in}"
                n_in += 1
            continue
        if node.op == "output":
            lines.append(f"return {fmt(node.args[0])}")
            continue
        names[node] = f"n{n_op}"
        n_op += 1
        args = [fmt(a) for a in node.args]
        args += [f"{k}={fmt(v)}" for k, v in node.kwargs.items() if k not in ("layout", "pin_memory", "device")]
        lines.append(f"{names[node]} = {_target_name(node.target)}({', '.join(args)})")
    return "\n".join(lines)


# the shape of a tiny hybrid model: 3 layers (2 linear-attention, 1 full), GQA in both kinds
_TINY_HYBRID = {
    "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
    "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
    "linear_key_head_dim": 8, "linear_value_head_dim": 8, "linear_num_key_heads": 2, "linear_num_value_heads": 4,
    "layer_types": ["linear_attention", "linear_attention", "full_attention"], "max_position_embeddings": 64,
}


def tiny_qwen3_next():
    """A 3-layer Qwen3-Next (2 linear-attention layers, 1 full) with random weights: no download."""
    from transformers import Qwen3NextConfig, Qwen3NextForCausalLM

    config = Qwen3NextConfig(**_TINY_HYBRID, num_experts=0)
    torch.manual_seed(0)
    return config, Qwen3NextForCausalLM(config).eval().to(DEVICE)


def tiny_qwen3_5():
    """The same 3 layers as Qwen3.5's text model (its own modeling file), random weights."""
    from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

    config = Qwen3_5TextConfig(**_TINY_HYBRID)
    torch.manual_seed(0)
    return config, Qwen3_5ForCausalLM(config).eval().to(DEVICE)
