"""Hugging Face transformers' plain-PyTorch GDN decode step -> ``recurrent_gated_delta_rule_update``.

When flash-linear-attention is not installed, Qwen3-Next and Qwen3.5 decode one token with
``torch_recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=state,
output_final_state=True, use_qk_l2norm_in_kernel=True)``: GQA head repeat, fp32 casts, optional
L2 norm, the delta-rule update of an fp32 K-major state ``[B, HV, K, V]``, the output cast back.
The search functions call the functions of the *installed* transformers (they moved between
releases: where GQA heads are repeated, where the L2 norm runs relative to the fp32 cast,
``.contiguous()`` or not), for each model module that defines one, with and without GQA, fp32
and half activations, q/k/v contiguous or slices of a packed projection; always with the L2 norm
on, as the models call it.

The replacement is the unfused op on that state as a pool of exactly B slots in ``"kv"`` layout,
written as an explicit ``auto_functionalized_v2`` call (the form Inductor's own functionalization
produces) so that Inductor's reinplacing runs the op on the cache's own buffer: transformers copies the new state back into the cache tensor, and
that copy disappears (the state is read once and written once). The gating that transformers
computes in the module's forward is then fused by the ``gating`` rewrite, which runs next.

Patterns are registered for the model modules already imported when a graph is compiled (a
graph can only hold this code if its module was imported). Unavailable (skipped, with a debug
log) when transformers is not installed, defines no such function, or its function does not
trace. Left alone: T != 1, a state that is not fp32 with dense inner dims or that is a view into a
larger buffer (the op is handed it as its own base), gates that broadcast, or inputs whose dtype or
shape the op refuses (e.g. fp64). Where a release repeats the key heads in the module (before
the function), this rewrite gives the op the repeated q/k (HK == HV), and
:mod:`.repeated_key_heads_into_decode_op` then hands it the key heads themselves.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import itertools
import logging
import sys

import torch
from torch._higher_order_ops.auto_functionalize import auto_functionalized_v2
from torch._inductor import pattern_matcher as pm

from fx_passes.counters import log
from fx_passes.patterns._common import (
    RECURRENT_OP,
    Rewrite,
    is_activation,
    known_equal,
    val,
)
from gdn_ops import _validate

#: transformers modules whose ``torch_recurrent_gated_delta_rule`` the pattern traces (the
#: later ones carry a copy of Qwen3-Next's function; identical copies are traced once)
HF_MODULES = (
    "transformers.models.qwen3_next.modeling_qwen3_next",
    "transformers.models.qwen3_5.modeling_qwen3_5",
    "transformers.models.qwen3_5_moe.modeling_qwen3_5_moe",
    "transformers.models.qwen4_exp.modeling_qwen4_exp",
    "transformers.models.olmo_hybrid.modeling_olmo_hybrid",
    "transformers.models.lara_mini.modeling_lara_mini",
)
HF_FUNCTION = "torch_recurrent_gated_delta_rule"


def imported_functions() -> list[tuple[str, object]]:
    """``(module name, plain function)`` for each model module of :data:`HF_MODULES` already imported.

    Only a module that was imported can have put its decode step into a graph, so nothing is
    imported here (importing transformers takes seconds). Hub/FLA wrappers are unwrapped: the
    pattern is the PyTorch path, which is what runs when those kernels are absent.
    """
    found = []
    for name in HF_MODULES:
        module = sys.modules.get(name)
        fn = getattr(module, HF_FUNCTION, None) if module is not None else None
        if fn is not None:
            found.append((name, inspect.unwrap(fn)))
    return found


def _search(hf_fn, use_l2norm: bool):
    def search(query, key, value, g, beta, state):
        return hf_fn(
            query, key, value, g=g, beta=beta, initial_state=state,
            output_final_state=True, use_qk_l2norm_in_kernel=use_l2norm,
        )

    return search


def _replace(use_l2norm: bool):
    def replace(query, key, value, g, beta, state):
        # transformers returns o.transpose(1, 2).contiguous(): for T == 1 the transpose of
        # [B, HV, 1, V] is already contiguous and keeps its strides. Allocating the same strides
        # spares Inductor a restriding copy of the output.
        _, T, HV, V = value.shape
        out = torch.empty_strided(value.shape, (HV * T * V, V, T * V, 1), dtype=query.dtype, device=value.device)
        res = auto_functionalized_v2(
            RECURRENT_OP,
            q=query, k=key, v=value, g=g, beta=beta,
            initial_state_indices=None,
            scale=query.shape[-1] ** -0.5, use_qk_l2norm_in_kernel=use_l2norm,
            state_layout="kv",
            _initial_state_source_base_index=0, _out_base_index=1, _all_bases=[state, out],
        )
        return res[2], res[1]

    return replace


@contextlib.contextmanager
def _quiet(logger_name: str):
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _qkv(B, HK, HV, K, V, dtype, packed):
    if not packed:
        return (torch.randn(B, 1, HK, K, dtype=dtype), torch.randn(B, 1, HK, K, dtype=dtype),
                torch.randn(B, 1, HV, V, dtype=dtype))
    # slices of one [B, 1, 2*HK*K + HV*V] projection, as the model's split produces
    qkv = torch.randn(B, 1, 2 * HK * K + HV * V, dtype=dtype)
    q, k, v = torch.split(qkv, [HK * K, HK * K, HV * V], dim=-1)
    return q.reshape(B, 1, HK, K), k.reshape(B, 1, HK, K), v.reshape(B, 1, HV, V)


def _whole_storage(t: torch.Tensor) -> bool:
    """``t`` starts its storage and spans all of it (what ``auto_functionalized_v2`` takes as a base)."""
    try:
        nbytes = t.untyped_storage().nbytes()
    except Exception:  # noqa: BLE001 - a tensor without storage: nothing to tell
        return False
    first, after = _validate._byte_span(t)  # the bytes its elements span, as the op's overlap check reads them
    return known_equal(first, 0) and known_equal(after, nbytes)


def _supported(match: pm.Match) -> str | None:
    q, k, v, g, beta, state = (val(match.kwargs.get(n)) for n in ("query", "key", "value", "g", "beta", "state"))
    if not all(isinstance(t, torch.Tensor) for t in (q, k, v, g, beta, state)):
        return "missing tensor metadata"
    if q.dim() != 4 or v.dim() != 4:
        return "q/v are not 4-D"
    B, T, HK, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    if not known_equal(T, 1):
        return f"T={T} (the decode step is written for one token)"
    if not (is_activation(q) and k.dtype == q.dtype and v.dtype == q.dtype):
        return f"q/k/v dtypes {q.dtype}, {k.dtype}, {v.dtype}"
    if not (is_activation(g) and is_activation(beta)):
        return f"g/beta dtypes {g.dtype}, {beta.dtype}"
    if not all(t.dim() == 3 and all(known_equal(a, b) for a, b in zip(t.shape, (B, T, HV))) for t in (g, beta)):
        # transformers broadcasts them (a decay shared by the batch, say); the op takes [B, T, HV]
        return f"g/beta shapes {list(g.shape)}, {list(beta.shape)} (the op takes [B, T, HV])"
    if state.dtype != torch.float32:
        return f"state dtype {state.dtype} (transformers keeps the recurrent state in fp32)"
    if state.dim() != 4 or not all(known_equal(a, b) for a, b in zip(state.shape, (B, HV, K, V))):
        return f"state shape {list(state.shape)}"
    if not ((known_equal(V, 1) or known_equal(state.stride(3), 1)) and (known_equal(K, 1) or known_equal(state.stride(2), V))):
        return f"state strides {state.stride()} (inner dims must be dense)"
    if not _whole_storage(state):
        # the op is handed the state as its own base (_all_bases): a view into more (an offset,
        # a stacked or larger buffer) would be cloned by Inductor as if it began its storage
        return "state is a view into a larger buffer (an offset or more storage than its elements)"
    if not (K <= 256 and known_equal(HV % HK, 0)):
        return f"head geometry HK={HK} HV={HV} K={K}"
    if not all(t.device == q.device for t in (k, v, g, beta, state)):
        return "inputs on several devices"
    return None


def _extra_check(match: pm.Match) -> bool:
    why = _supported(match)
    if why is not None:
        log.debug("hf_recurrence: left a match alone: %s", why)
        return False
    log.info("hf_recurrence: transformers decode step at %s -> recurrent_gated_delta_rule_update",
             match.output_node().name)
    return True


class HFTorchRecurrentGatedDeltaRule(Rewrite):
    name = "hf_recurrence"
    EXPECTED_MATCHES = 1

    def __init__(self) -> None:
        self.pass_ = pm.PatternMatcherPass(pass_name="gdn_ops_hf_recurrence")
        #: modules whose function was looked at (traced or found not to trace)
        self.seen_modules: list[str] = []
        #: modules whose function has registered patterns
        self.traced_modules: list[str] = []
        self._sources: set[str] = set()

    def setup(self) -> bool:
        if importlib.util.find_spec("transformers") is None:
            log.debug("hf_recurrence: transformers is not installed; skipped")
            return False
        self._register_imported()
        return True

    def _register_imported(self) -> None:
        new = [(m, fn) for m, fn in imported_functions() if m not in self.seen_modules]
        if not new:
            return
        from fx_passes.patterns._common import fresh_fake_mode

        with fresh_fake_mode():
            for module, fn in new:
                self.seen_modules.append(module)
                self._register(module, fn)

    def _register(self, module: str, fn) -> None:
        from fx_passes.trace import trace

        try:
            source = inspect.getsource(fn)
        except (OSError, TypeError):
            source = repr(fn)
        if source in self._sources:
            # e.g. Qwen3.5 reusing Qwen3-Next's function: its patterns are registered already
            self.traced_modules.append(module)
            return
        B, K, V = 2, 8, 16
        registered = 0
        # transformers always decodes with the L2 norm on. Layout matters: releases that call
        # .contiguous() trace a clone for a value that is a slice of the packed qkv projection
        # (what a model passes) and none for a contiguous one (what a synthetic caller passes).
        for packed, (HK, HV), dtype in itertools.product(
            (True, False), ((2, 4), (2, 2)), (torch.float32, torch.bfloat16)
        ):
            # bf16 stands for fp16 too: dtypes are ignored by the first, coarse match, and every
            # match is re-traced with the user's shapes, strides and dtypes before it is accepted.
            q, k, v = _qkv(B, HK, HV, K, V, dtype, packed)
            inputs = [q, k, v, -torch.rand(B, 1, HV), torch.rand(B, 1, HV, dtype=dtype), torch.randn(B, HV, K, V)]
            try:
                with _quiet("torch._subclasses.fake_tensor"):  # it logs the failure below as an error
                    ok = pm.register_replacement(
                        _search(fn, True), _replace(True), inputs, trace, self.pass_,
                        extra_check=_extra_check, skip_duplicates=True,
                    )
            except Exception as e:  # noqa: BLE001 - transformers code we do not control
                # e.g. older releases repeat GQA heads in the module, not in this function:
                # their function only traces with as many key heads as value heads
                log.debug("hf_recurrence: %s.%s does not trace with HK=%d HV=%d %s (%s: %s); variant skipped",
                          module, HF_FUNCTION, HK, HV, dtype, type(e).__name__, e)
                continue
            registered += bool(ok)
        if registered:
            self._sources.add(source)
            self.traced_modules.append(module)
        log.debug("hf_recurrence: %d patterns from %s.%s", registered, module, HF_FUNCTION)

    def apply(self, graph: torch.fx.Graph) -> int:
        self._register_imported()
        if not self.traced_modules or graph.owning_module is None:
            # (Inductor always passes a GraphModule's graph; the matcher needs the module)
            return 0
        return self.pass_.apply(graph)


REWRITE = HFTorchRecurrentGatedDeltaRule()
