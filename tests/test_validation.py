"""Bad input raises a clear exception naming the argument, before any kernel touches the pool."""

from __future__ import annotations

import pytest
import torch

import gdn_ops

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
B, T, HK, HV, K, V = 3, 2, 2, 4, 32, 16


def _fused_kwargs(device):
    r = lambda *s, dtype=torch.bfloat16: torch.randn(*s, device=device, dtype=dtype)
    return {
        "A_log": r(HV, dtype=torch.float32), "a": r(B, T, HV), "dt_bias": r(HV, dtype=torch.float32),
        "softplus_beta": 1.0, "softplus_threshold": 20.0,
        "q": r(B, T, HK, K), "k": r(B, T, HK, K), "v": r(B, T, HV, V), "b": r(B, T, HV),
        "initial_state_source": r(5, HV, V, K, dtype=torch.float32),
        "initial_state_indices": torch.tensor([4, -1, 0], dtype=torch.int32, device=device),
    }


def _unfused_kwargs(device):
    kw = _fused_kwargs(device)
    g, beta = gdn_ops.gdn_gating(kw.pop("A_log"), kw.pop("a"), kw.pop("dt_bias"), kw.pop("b"))
    del kw["softplus_beta"], kw["softplus_threshold"]
    return dict(kw, g=g, beta=beta)


def _t(kw, name, fn):
    return dict(kw, **{name: fn(kw[name])})


def _inside(kw, name, holder, buffer):
    """``kw`` with input ``name`` copied to the start of ``buffer``, which is passed as ``holder``."""
    view = buffer.view(-1)[:kw[name].numel()].view(kw[name].shape).copy_(kw[name])
    return dict(kw, **{name: view, holder: buffer})


# (argument named in the message, exception type, how to break the fused op's valid kwargs)
FUSED_CASES = {
    "q_not_4d": ("q", ValueError, lambda kw: _t(kw, "q", lambda x: x.flatten(2))),
    "q_integer": ("q", TypeError, lambda kw: _t(kw, "q", lambda x: x.to(torch.int32))),
    "k_shape": ("k", ValueError, lambda kw: _t(kw, "k", lambda x: x[..., :-1])),
    "v_batch": ("v", ValueError, lambda kw: _t(kw, "v", lambda x: x[:-1])),
    "qkv_dtypes_differ": ("'q', 'k', 'v'", TypeError, lambda kw: _t(kw, "v", lambda x: x.half())),
    "k_device": ("k", ValueError, lambda kw: _t(kw, "k", lambda x: x.to("meta"))),
    "gqa_not_multiple": ("v", ValueError, lambda kw: _t(
        _t(kw, "v", lambda x: x[:, :, :3]), "initial_state_source", lambda x: x[:, :3])),
    "head_dim_too_large": ("q", ValueError, lambda kw: dict(
        kw, q=torch.randn(B, T, HK, 512, device=kw["q"].device), k=torch.randn(B, T, HK, 512, device=kw["q"].device),
        v=kw["v"].float(), initial_state_source=torch.randn(5, HV, V, 512, device=kw["q"].device))),
    "no_tokens": ("q", ValueError, lambda kw: {n: (x[:, :0] if n in "q k v a b" else x) for n, x in kw.items()}),
    "layout_name": ("state_layout", ValueError, lambda kw: dict(kw, state_layout="KV")),
    "pool_dtype": ("initial_state_source", TypeError, lambda kw: _t(kw, "initial_state_source", lambda x: x.double())),
    "pool_shape_for_layout": ("initial_state_source", ValueError, lambda kw: dict(kw, state_layout="kv")),
    "pool_heads": ("initial_state_source", ValueError, lambda kw: _t(kw, "initial_state_source", lambda x: x[:, :2])),
    "pool_inner_not_dense": ("initial_state_source", ValueError, lambda kw: _t(
        kw, "initial_state_source", lambda x: x.transpose(-1, -2).contiguous().transpose(-1, -2))),
    "no_indices_pool_not_batch": ("initial_state_source", ValueError, lambda kw: dict(kw, initial_state_indices=None)),
    "indices_float": ("initial_state_indices", TypeError, lambda kw: _t(kw, "initial_state_indices", lambda x: x.float())),
    "indices_shape": ("initial_state_indices", ValueError, lambda kw: _t(kw, "initial_state_indices", lambda x: x[:, None])),
    "order_without_indices": ("initial_state_order", ValueError, lambda kw: dict(
        kw, initial_state_order=gdn_ops.slot_order(kw["initial_state_indices"]), initial_state_indices=None,
        initial_state_source=kw["initial_state_source"][:B])),
    "order_dtype": ("initial_state_order", TypeError, lambda kw: dict(
        kw, initial_state_order=gdn_ops.slot_order(kw["initial_state_indices"]).long())),
    "order_rows_only": ("initial_state_order", ValueError, lambda kw: dict(
        kw, initial_state_order=gdn_ops.slot_order(kw["initial_state_indices"])[1])),
    "order_of_other_batch": ("initial_state_order", ValueError, lambda kw: dict(
        kw, initial_state_order=gdn_ops.slot_order(kw["initial_state_indices"][:2]))),
    "order_not_dense": ("initial_state_order", ValueError, lambda kw: dict(
        kw, initial_state_order=gdn_ops.slot_order(kw["initial_state_indices"]).t().contiguous().t())),
    "order_device": ("initial_state_order", ValueError, lambda kw: dict(
        kw, initial_state_order=gdn_ops.slot_order(kw["initial_state_indices"]).to("meta"))),
    "a_shape": ("a", ValueError, lambda kw: _t(kw, "a", lambda x: x[..., :1])),
    "b_dtype": ("b", TypeError, lambda kw: _t(kw, "b", lambda x: x.to(torch.int64))),
    "A_log_shape": ("A_log", ValueError, lambda kw: _t(kw, "A_log", lambda x: x[:1])),
    "dt_bias_shape": ("dt_bias", ValueError, lambda kw: _t(kw, "dt_bias", lambda x: x[None])),
    "scale_nan": ("scale", ValueError, lambda kw: dict(kw, scale=float("nan"))),
    "softplus_beta_zero": ("softplus_beta", ValueError, lambda kw: dict(kw, softplus_beta=0.0)),
    "softplus_threshold_inf": ("softplus_threshold", ValueError, lambda kw: dict(kw, softplus_threshold=float("inf"))),
    "out_dtype_int": ("out_dtype", ValueError, lambda kw: dict(kw, out_dtype=torch.int8)),
    "out_shape": ("out", ValueError, lambda kw: dict(kw, out=torch.empty(B, T, HV, V + 1, dtype=torch.bfloat16,
                                                                         device=kw["q"].device))),
    "out_dtype_mismatch": ("out", TypeError, lambda kw: dict(kw, out_dtype=torch.float32, out=torch.empty(
        B, T, HV, V, dtype=torch.bfloat16, device=kw["q"].device))),
    # out_dtype not given: the op takes out's dtype, and the message names the argument passed
    "out_int": ("out'", TypeError, lambda kw: dict(kw, out=torch.empty(B, T, HV, V, dtype=torch.int32,
                                                                       device=kw["q"].device))),
    # tensors the op writes: no element of them may share memory with another element or an input
    "pool_slots_overlap": ("initial_state_source", ValueError, lambda kw: _t(kw, "initial_state_source", lambda x: (
        x.new_empty(x.numel()).as_strided(x.shape, (x.stride(1), *x.stride()[1:])).copy_(x[0])))),
    "pool_expanded": ("initial_state_source", ValueError, lambda kw: _t(
        kw, "initial_state_source", lambda x: x[:1].expand(x.shape))),
    "out_expanded": ("out", ValueError, lambda kw: dict(kw, out=torch.empty(
        1, T, HV, V, dtype=torch.bfloat16, device=kw["q"].device).expand(B, T, HV, V))),
    "out_is_v": ("out' must not share memory with 'v", ValueError, lambda kw: dict(kw, out=kw["v"])),
    # q written over by out: the CPU kernel cleared out before reading q
    "out_over_q": ("out' must not share memory with 'q", ValueError, lambda kw: _inside(
        kw, "q", "out", torch.empty(B, T, HV, V, dtype=torch.bfloat16, device=kw["q"].device))),
    "pool_over_b": ("initial_state_source' must not share memory with 'b", ValueError, lambda kw: _inside(
        kw, "b", "initial_state_source", kw["initial_state_source"].clone())),
    # torch's op schema lets None through where a tensor is required
    "q_none": ("q", TypeError, lambda kw: dict(kw, q=None)),
    "v_none": ("v", TypeError, lambda kw: dict(kw, v=None)),
    "a_none": ("a", TypeError, lambda kw: dict(kw, a=None)),
    "A_log_none": ("A_log", TypeError, lambda kw: dict(kw, A_log=None)),
    "out_not_tensor": ("out", TypeError, lambda kw: dict(kw, out=[0.0], out_dtype=torch.float32)),
    # scalars: a tensor would be read on the host (a sync), None cannot be a float
    "softplus_beta_none": ("softplus_beta", TypeError, lambda kw: dict(kw, softplus_beta=None)),
    "softplus_threshold_tensor": ("softplus_threshold", TypeError, lambda kw: dict(
        kw, softplus_threshold=torch.tensor(20.0, device=kw["q"].device))),
    "scale_tensor": ("scale", TypeError, lambda kw: dict(kw, scale=torch.tensor(0.5, device=kw["q"].device))),
    "scale_text": ("scale", TypeError, lambda kw: dict(kw, scale="0.5")),
}

UNFUSED_CASES = {
    "g_shape": ("g", ValueError, lambda kw: _t(kw, "g", lambda x: x[:, :1])),
    "beta_dtype": ("beta", TypeError, lambda kw: _t(kw, "beta", lambda x: x.double())),
    "pool_shape": ("initial_state_source", ValueError, lambda kw: _t(kw, "initial_state_source", lambda x: x[..., :8])),
    "pool_none": ("initial_state_source", TypeError, lambda kw: dict(kw, initial_state_source=None)),
    "g_none": ("g", TypeError, lambda kw: dict(kw, g=None)),
    "scale_tensor": ("scale", TypeError, lambda kw: dict(kw, scale=torch.tensor(0.5, device=kw["q"].device))),
    "out_over_beta": ("out' must not share memory with 'beta", ValueError, lambda kw: _inside(
        kw, "beta", "out", torch.empty(B, T, HV, V, dtype=torch.float32, device=kw["q"].device))),
}


def _assert_rejected(fn, kwargs, name, exc_type):
    pool = kwargs["initial_state_source"]
    before = pool.clone() if pool is not None else None
    with pytest.raises(exc_type, match=f"argument.*{name}"):
        fn(**kwargs)
    if pool is not None and pool.device.type != "meta":
        assert torch.equal(pool, before), "the pool changed although the call was rejected"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", FUSED_CASES, ids=list(FUSED_CASES))
def test_fused_op_rejects_bad_argument(device, case):
    name, exc_type, breaker = FUSED_CASES[case]
    _assert_rejected(gdn_ops.fused_sigmoid_gating_delta_rule_update, breaker(_fused_kwargs(device)), name, exc_type)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", UNFUSED_CASES, ids=list(UNFUSED_CASES))
def test_unfused_op_rejects_bad_argument(device, case):
    name, exc_type, breaker = UNFUSED_CASES[case]
    _assert_rejected(gdn_ops.recurrent_gated_delta_rule_update, breaker(_unfused_kwargs(device)), name, exc_type)


@pytest.mark.parametrize("device", DEVICES)
def test_fake_kernels_run_the_same_checks(device):
    """Under torch.compile the fake kernel sees the bad shape first: same exception, same message."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    kw = FUSED_CASES["a_shape"][2](_fused_kwargs(device))
    out = torch.empty(B, T, HV, V, dtype=torch.bfloat16, device=device)
    with FakeTensorMode(allow_non_fake_inputs=False) as mode:
        fake = {n: mode.from_tensor(x) if isinstance(x, torch.Tensor) else x for n, x in kw.items()}
        with pytest.raises(ValueError, match="argument 'a'"):
            torch.ops.gdn_ops.fused_sigmoid_gating_delta_rule_update(
                *[fake[n] for n in ("A_log", "a", "dt_bias", "softplus_beta", "softplus_threshold", "q", "k", "v",
                                    "b", "initial_state_source", "initial_state_indices")],
                None, False, "vk", mode.from_tensor(out))


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
def test_the_ops_name_a_missing_out(fused):
    """The registered ops take ``out`` as a tensor; torch's schema lets None through to them."""
    kw = _fused_kwargs("cpu") if fused else _unfused_kwargs("cpu")
    names = (["A_log", "a", "dt_bias", "softplus_beta", "softplus_threshold", "q", "k", "v", "b"] if fused
             else ["q", "k", "v", "g", "beta"]) + ["initial_state_source", "initial_state_indices"]
    op = (torch.ops.gdn_ops.fused_sigmoid_gating_delta_rule_update if fused
          else torch.ops.gdn_ops.recurrent_gated_delta_rule_update)
    with pytest.raises(TypeError, match="argument 'out' must be a torch.Tensor; got NoneType"):
        op(*[kw[n] for n in names], None, False, "vk", None)


def test_gating_rejects_scalars_that_are_not_numbers():
    args = torch.randn(4), torch.randn(2, 4), torch.randn(4), torch.randn(2, 4)
    with pytest.raises(TypeError, match="argument 'softplus_beta' must be a Python float; got NoneType"):
        gdn_ops.gdn_gating(*args, None)
    with pytest.raises(TypeError, match="argument 'softplus_threshold' must be a Python float; got Tensor"):
        gdn_ops.gdn_gating(*args, 1.0, torch.tensor(20.0))


def test_gating_rejects_mismatched_a_and_b():
    with pytest.raises(ValueError, match="argument 'b'"):
        gdn_ops.gdn_gating(torch.randn(4), torch.randn(2, 4), torch.randn(4), torch.randn(3, 4))
    with pytest.raises(ValueError, match="argument 'A_log'"):
        gdn_ops.gdn_gating(torch.randn(3), torch.randn(2, 4), torch.randn(4), torch.randn(2, 4))


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch_is_a_no_op(device):
    kw = {n: (x[:0] if n in ("q", "k", "v", "a", "b", "initial_state_indices") else x)
          for n, x in _fused_kwargs(device).items()}
    before = kw["initial_state_source"].clone()
    o = gdn_ops.fused_sigmoid_gating_delta_rule_update(**kw)
    assert o.shape == (0, T, HV, V)
    assert torch.equal(kw["initial_state_source"], before)


@pytest.mark.parametrize("device", DEVICES)
def test_slot_order_rejects_what_is_not_a_vector_of_slots(device):
    with pytest.raises(TypeError, match="argument 'initial_state_indices'"):
        gdn_ops.slot_order(torch.zeros(4, device=device))
    with pytest.raises(ValueError, match="argument 'initial_state_indices'"):
        gdn_ops.slot_order(torch.zeros(2, 3, dtype=torch.int32, device=device))


@pytest.mark.parametrize("device", DEVICES)
def test_views_of_one_buffer_apart_are_accepted(device):
    """What the memory checks must let through: a head-major pool, a pool of slots a page apart,
    and out beside q, k and v in one buffer; each updates what the reference does."""
    kw = _fused_kwargs(device)
    pool = kw["initial_state_source"]
    q, k, v = kw["q"], kw["k"], kw["v"]
    packed = torch.empty(4 * q.numel(), dtype=q.dtype, device=device)  # [q | k | v | out]
    views = [packed[i * q.numel():(i + 1) * q.numel()].view(q.shape) for i in range(4)]
    views[0].copy_(q), views[1].copy_(k), views[2].view(v.shape).copy_(v)
    for given in (pool.transpose(0, 1).contiguous().transpose(0, 1),
                  torch.empty(pool.shape[0], 3 * pool[0].numel(), device=device)[:, :pool[0].numel()]
                  .unflatten(1, pool.shape[1:]).copy_(pool)):
        expected_pool = pool.clone()
        expected = gdn_ops.fused_sigmoid_gating_delta_rule_update(**dict(kw, initial_state_source=expected_pool))
        o = gdn_ops.fused_sigmoid_gating_delta_rule_update(**dict(
            kw, q=views[0], k=views[1], v=views[2].view(v.shape), initial_state_source=given,
            out=views[3].view(v.shape)))
        assert o.data_ptr() == views[3].data_ptr()
        torch.testing.assert_close(o, expected, rtol=0, atol=0)
        torch.testing.assert_close(given, expected_pool, rtol=0, atol=0)
