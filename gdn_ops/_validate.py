"""Argument checks shared by the public functions, the real kernels and the fake kernels.

Every check reads metadata only (shapes, strides, dtypes, devices), never tensor values, so none
of them synchronises the host and all stay legal during CUDA-graph capture. Index *values* are
handled by the kernels themselves: an index outside ``[0, num_slots)`` is a padding row.
"""

from __future__ import annotations

import numbers

import torch

ACTIVATION_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
STATE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
INDEX_DTYPES = (torch.int32, torch.int64)
STATE_LAYOUTS = ("vk", "kv")
# The kernel keeps a [BV, next_pow2(K)] tile of the state in registers.
MAX_HEAD_DIM_K = 256


def _fail(name: str, expected: str, got: object) -> None:
    raise ValueError(f"gdn_ops: argument '{name}' must be {expected}; got {got}")


def check_tensor(name: str, t: object) -> None:
    """A required tensor argument: torch's op schema lets ``None`` through to the kernels."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"gdn_ops: argument '{name}' must be a torch.Tensor; got {type(t).__name__}")


def _check_distinct_elements(name: str, t: torch.Tensor) -> None:
    """A tensor the kernels write: no two of its elements may share memory (an expanded dim, or a
    slot stride shorter than a slot). Every stride, in increasing order, must be at least the span
    of the dims with smaller strides, a rule every slicing, permutation or page stride keeps."""
    if t.is_contiguous():
        return
    span = 1
    for size, stride in sorted(((n, s) for n, s in zip(t.shape, t.stride()) if n > 1), key=lambda d: d[1]):
        if stride < span:
            _fail(name, "free of elements that share memory (each stride, smallest first, at least the span "
                  "of the dims with smaller strides)", f"shape {list(t.shape)} with strides {list(t.stride())}")
        span += stride * (size - 1)


# plain tensors only: fake and functional tensors (tracing) have no addresses, meta ones all 0
_REAL = (torch.Tensor, torch.nn.Parameter)


def _byte_span(t: torch.Tensor) -> tuple[int, int]:
    """The bytes ``[first, after the last)`` of ``t``'s storage that its elements span."""
    size, first = t.element_size(), t.storage_offset()
    last = first + sum(stride * (n - 1) for n, stride in zip(t.shape, t.stride()))
    return first * size, (last + 1) * size


def check_disjoint(written: dict[str, torch.Tensor | None], read: dict[str, torch.Tensor | None]) -> None:
    """The tensors a kernel writes must not share memory with each other or with what it reads.

    Compared by the span of each tensor's elements in its storage (pointers only: no sync), so two
    views interleaved in one buffer count as sharing it; only tensors of one storage are spanned."""
    named = [(n, t) for n, t in (*written.items(), *read.items()) if type(t) in _REAL and not t.is_meta]
    storages = [t.untyped_storage().data_ptr() for _, t in named]
    for i, (name, t) in enumerate(named):
        if name not in written:
            break  # the written tensors come first
        if storages.count(storages[i]) == 1 or not t.numel():
            continue  # the common case: a storage of its own
        for j in range(i + 1, len(named)):
            other, u = named[j]
            if storages[j] != storages[i] or not u.numel():
                continue
            (lo, hi), (other_lo, other_hi) = _byte_span(t), _byte_span(u)
            if lo < other_hi and other_lo < hi:
                raise ValueError(
                    f"gdn_ops: argument '{name}' must not share memory with '{other}' (the op writes '{name}'); "
                    f"got views of one storage spanning bytes [{lo}, {hi}) and [{other_lo}, {other_hi})")


def check_float(name: str, value: object, optional: bool = False) -> None:
    """A Python number argument (``None`` too where ``optional``). A tensor is refused: turning it
    into a float reads its value, which synchronises the host (and fails inside CUDA-graph capture)."""
    if value is None and optional:
        return
    if isinstance(value, torch.Tensor) or not isinstance(value, (numbers.Real, torch.SymFloat, torch.SymInt)):
        expected = "a Python float" + (" or None" if optional else "")
        raise TypeError(f"gdn_ops: argument '{name}' must be {expected}; got {type(value).__name__}")


def _check_dtype(name: str, t: torch.Tensor, allowed: tuple[torch.dtype, ...]) -> None:
    if t.dtype not in allowed:
        raise TypeError(f"gdn_ops: argument '{name}' must have dtype in {list(allowed)}; got {t.dtype}")


def _check_shape(name: str, t: torch.Tensor, shape: tuple[int, ...], dims: str) -> None:
    if tuple(t.shape) != tuple(shape):
        _fail(name, f"of shape {dims} = {list(shape)}", list(t.shape))


def _check_device(name: str, t: torch.Tensor, device: torch.device) -> None:
    if t.device != device:
        _fail(name, f"on device {device} like q", t.device)


def check_no_grad(op_name: str, **tensors: object) -> None:
    """The in-place ops are inference-only: refuse inputs that would need a backward pass."""
    if not torch.is_grad_enabled():
        return
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.requires_grad:
            raise RuntimeError(
                f"gdn_ops.{op_name} updates the state pool in place and is inference-only, but argument "
                f"'{name}' requires grad. Call it under torch.no_grad() / torch.inference_mode(), or detach "
                "the inputs; for training use the chunked (parallel) Gated DeltaNet formulation instead."
            )


def resolve_out_dtype(v: torch.Tensor, out_dtype: torch.dtype | None) -> torch.dtype:
    if out_dtype is None:
        return v.dtype
    if out_dtype not in ACTIVATION_DTYPES:
        _fail("out_dtype", f"None or one of {list(ACTIVATION_DTYPES)}", out_dtype)
    return out_dtype


def check_recurrence(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    initial_state_source: torch.Tensor,
    initial_state_indices: torch.Tensor | None,
    state_layout: str,
    out: torch.Tensor | None,
    out_dtype: torch.dtype | None = None,
) -> tuple[int, int, int, int, int, int]:
    """Check the tensors common to both recurrence ops; return ``(B, T, HK, HV, K, V)``."""
    for name, t in (("q", q), ("k", k), ("v", v), ("initial_state_source", initial_state_source)):
        check_tensor(name, t)
    for name, t in (("initial_state_indices", initial_state_indices), ("out", out)):
        if t is not None:
            check_tensor(name, t)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            _fail(name, "a 4-D tensor [B, T, heads, head_dim]", f"{t.dim()}-D shape {list(t.shape)}")
        _check_dtype(name, t, ACTIVATION_DTYPES)
    B, T, HK, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    device = q.device
    _check_shape("k", k, (B, T, HK, K), "[B, T, HK, K] like q")
    _check_shape("v", v, (B, T, HV, V), "[B, T, HV, V] with B, T of q")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"gdn_ops: arguments 'q', 'k', 'v' must share one dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    for name, t in (("k", k), ("v", v)):
        _check_device(name, t, device)
    if min(T, HK, K, HV, V) < 1:  # B = 0 is a legal empty batch
        _fail("q", "non-empty in T, heads, K and V", f"q {list(q.shape)}, v {list(v.shape)}")
    if HV % HK != 0:
        _fail("v", f"a multiple of q's {HK} key heads in dim 2 (GQA)", f"{HV} value heads")
    if K > MAX_HEAD_DIM_K:
        _fail("q", f"of head dim K <= {MAX_HEAD_DIM_K}", K)

    if state_layout not in STATE_LAYOUTS:
        _fail("state_layout", "'vk' ([slots, HV, V, K]) or 'kv' ([slots, HV, K, V])", repr(state_layout))
    pool = initial_state_source
    _check_dtype("initial_state_source", pool, STATE_DTYPES)
    _check_device("initial_state_source", pool, device)
    inner = (V, K) if state_layout == "vk" else (K, V)
    dims = "[num_slots, HV, V, K]" if state_layout == "vk" else "[num_slots, HV, K, V]"
    if pool.dim() != 4 or tuple(pool.shape[1:]) != (HV, *inner):
        _fail("initial_state_source", f"of shape {dims} = [*, {HV}, {inner[0]}, {inner[1]}] (state_layout={state_layout!r})",
              list(pool.shape))
    # Only the two inner dims must be dense; slot and head strides are free (page-strided pools).
    if (inner[1] > 1 and pool.stride(3) != 1) or (inner[0] > 1 and pool.stride(2) != inner[1]):
        _fail("initial_state_source", f"contiguous in its two inner dims (strides [.., .., {inner[1]}, 1])",
              f"strides {list(pool.stride())}")
    _check_distinct_elements("initial_state_source", pool)

    if initial_state_indices is None:
        if pool.shape[0] != B:
            _fail("initial_state_source", f"a pool of exactly B={B} slots when initial_state_indices is None",
                  f"{pool.shape[0]} slots")
    else:
        idx = initial_state_indices
        _check_dtype("initial_state_indices", idx, INDEX_DTYPES)
        _check_device("initial_state_indices", idx, device)
        _check_shape("initial_state_indices", idx, (B,), "[B]")

    if out is not None:
        _check_dtype("out", out, ACTIVATION_DTYPES)  # before out_dtype, which the op takes from it
        expected_dtype = resolve_out_dtype(v, out_dtype)
        _check_shape("out", out, (B, T, HV, V), "[B, T, HV, V]")
        _check_device("out", out, device)
        _check_distinct_elements("out", out)
        if out.dtype != expected_dtype:
            raise TypeError(f"gdn_ops: argument 'out' must have dtype {expected_dtype} (out_dtype); got {out.dtype}")
    return B, T, HK, HV, K, V


def check_slot_indices(indices: torch.Tensor) -> None:
    """The indices ``slot_order`` sorts: ``[B]`` int32 or int64, any values and strides."""
    check_tensor("initial_state_indices", indices)
    _check_dtype("initial_state_indices", indices, INDEX_DTYPES)
    if indices.dim() != 1:
        _fail("initial_state_indices", "a 1-D tensor [B]", f"shape {list(indices.shape)}")


def check_order(order: torch.Tensor | None, indices: torch.Tensor | None, B: int, device: torch.device) -> None:
    """``initial_state_order``: ``None``, or the ``[2, B]`` order ``gdn_ops.slot_order`` makes of the
    indices (their dtype, dense). Its values are the kernel's to bound-check, as the indices' are."""
    if order is None:
        return
    name = "initial_state_order"
    check_tensor(name, order)
    if indices is None:
        _fail(name, "None when initial_state_indices is None (it is the order of those indices)", "a tensor")
    if order.dtype != indices.dtype:
        raise TypeError(f"gdn_ops: argument '{name}' must have the dtype of initial_state_indices ({indices.dtype}), "
                        f"as gdn_ops.slot_order(initial_state_indices) makes it; got {order.dtype}")
    _check_shape(name, order, (2, B), "[2, B] (gdn_ops.slot_order(initial_state_indices))")
    _check_device(name, order, device)
    if not order.is_contiguous():
        _fail(name, "contiguous", f"strides {list(order.stride())}")


def check_gates(
    name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor, B: int, T: int, HV: int, device: torch.device
) -> None:
    """Per-token gate inputs ``[B, T, HV]`` (a/b of the fused op, or g/beta of the unfused one)."""
    for name, t in ((name_a, a), (name_b, b)):
        check_tensor(name, t)
        _check_dtype(name, t, ACTIVATION_DTYPES)
        _check_shape(name, t, (B, T, HV), "[B, T, HV]")
        _check_device(name, t, device)


def check_head_params(A_log: torch.Tensor, dt_bias: torch.Tensor, HV: int, device: torch.device) -> None:
    """Per-value-head gating parameters ``A_log, dt_bias [HV]``."""
    for name, t in (("A_log", A_log), ("dt_bias", dt_bias)):
        check_tensor(name, t)
        _check_dtype(name, t, ACTIVATION_DTYPES)
        _check_shape(name, t, (HV,), "[HV]")
        _check_device(name, t, device)


def check_scalars(scale: float | None, softplus_beta: float = 1.0, softplus_threshold: float = 20.0) -> None:
    import math

    if scale is not None and not math.isfinite(scale):
        _fail("scale", "None or a finite float", scale)
    if not (math.isfinite(softplus_beta) and softplus_beta > 0):
        _fail("softplus_beta", "a finite float > 0", softplus_beta)
    if not math.isfinite(softplus_threshold):
        _fail("softplus_threshold", "a finite float", softplus_threshold)
