"""The decode-step implementations the benchmark compares, and the check each must pass first.

A provider turns one problem (a state pool, its int32 slot indices and one token of inputs) into a
zero-argument callable that runs one decode step, updating the pool in place and returning the
output ``o [B, T, HV, V]``. Every callable is built once and replayed inside a CUDA graph, so it
must allocate nothing that outlives the call and must never synchronise the host.

Providers:

* ``gdn_ops``: :func:`gdn_ops.fused_sigmoid_gating_delta_rule_update`, gating in the kernel.
* ``gdn_ops_no_pdl``: the same kernel launched without programmatic dependent launch.
* ``gdn_ops_step_order``: the same op given ``initial_state_order``, the step's slot order
  computed once when the call is built (an engine computes it once per step and shares it between
  every GDN layer, so it is not part of a layer's call).
* ``sglang``: SGLang's ``fused_sigmoid_gating_delta_rule_update`` (Triton), loaded by file path
  from the sglang wheel; V-major pools only.
* ``fla``: flash-linear-attention's ``fused_recurrent_gated_delta_rule``, which takes dense
  per-row states: a pool user gathers ``pool[idx]`` and scatters the final state back.
* ``copy``: not a decode step but a yardstick: PyTorch's elementwise kernel copying as many
  bytes as the step moves, i.e. the best a non-overlapping kernel of that size can do.
* ``torch_compile`` / ``eager``: plain PyTorch (gather, :mod:`gdn_ops.reference` gating and step
  in fp32, scatter), with and without ``torch.compile``.

``TRITON_INTERPRET=1 python -m benchmarks.providers`` checks every available provider on CPU
tensors at a small geometry (the Triton peers through the interpreter).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from gdn_ops.reference import (
    delta_rule_step_reference,
    fused_sigmoid_gating_delta_rule_reference,
    gdn_gating_reference,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SOFTPLUS_BETA = 1.0
SOFTPLUS_THRESHOLD = 20.0
# Qwen3-Next normalises q and k inside the recurrence kernel.
USE_QK_L2NORM = True

# ----------------------------------------------------------------------------------------------
# Problem geometry and data
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """One benchmark point: a Qwen3-Next tensor-parallel shard at one batch size."""

    tp: int
    HK: int
    HV: int
    K: int
    V: int
    B: int
    state_dtype: torch.dtype
    layout: str  # "vk": pool [slots, HV, V, K]; "kv": [slots, HV, K, V]
    T: int = 1
    act_dtype: torch.dtype = torch.bfloat16
    # elements between one slot's state and the next beyond a dense pool: a page-strided pool, as
    # an engine whose state page holds more than the state allocates it
    slot_pad: int = 0

    @property
    def slot_shape(self) -> tuple[int, int, int]:
        return (self.HV, self.V, self.K) if self.layout == "vk" else (self.HV, self.K, self.V)

    @property
    def state_bytes(self) -> int:
        """State bytes of the whole batch (read once and written once per step)."""
        return self.B * self.HV * self.K * self.V * self.state_dtype.itemsize

    def bytes_per_call(self) -> int:
        """The fewest bytes one decode step must move through device memory.

        State read + write, plus q, k, v, a, b read and o written in the activation dtype, the
        int32 indices, and the fp32 ``A_log, dt_bias``. The state is ~99% of it.
        """
        act = self.act_dtype.itemsize
        B, T = self.B, self.T
        qk = 2 * B * T * self.HK * self.K * act
        v_and_o = 2 * B * T * self.HV * self.V * act
        gates = 2 * B * T * self.HV * act
        return 2 * self.state_bytes + qk + v_and_o + gates + 4 * B + 2 * 4 * self.HV

    def label(self) -> str:
        dt = dtype_name(self.state_dtype)
        pad = f" slot_pad={self.slot_pad}" if self.slot_pad else ""
        return f"tp{self.tp} HK={self.HK} HV={self.HV} K={self.K} V={self.V} B={self.B} {dt} {self.layout}{pad}"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass
class Problem:
    """A state pool, its slot indices and one step of inputs (``inputs['out']`` receives o)."""

    pool: torch.Tensor
    indices: torch.Tensor  # int32 [B]
    inputs: dict[str, torch.Tensor]


def make_problem(cfg: Config, device: torch.device | str) -> Problem:
    """Fresh random data (never zeros); rows address the pool's slots in a shuffled order.

    The gates give a per-step decay ``exp(g)`` between about 0.75 and 1, so a state replayed
    through many steps keeps normal-range values instead of decaying towards denormals.
    """
    B, T, HK, HV, K, V = cfg.B, cfg.T, cfg.HK, cfg.HV, cfg.K, cfg.V
    act = cfg.act_dtype
    slot = HV * K * V
    pages = torch.randn((B, slot + cfg.slot_pad), device=device, dtype=torch.float32).to(cfg.state_dtype)
    pool = pages[:, :slot].view(B, *cfg.slot_shape)  # dense when slot_pad is 0
    indices = torch.randperm(B, device=device).to(torch.int32)
    inputs = {
        "q": torch.randn(B, T, HK, K, device=device, dtype=act),
        "k": torch.randn(B, T, HK, K, device=device, dtype=act),
        "v": torch.randn(B, T, HV, V, device=device, dtype=act),
        "a": torch.randn(B, T, HV, device=device, dtype=act),
        "b": torch.randn(B, T, HV, device=device, dtype=act),
        "A_log": torch.empty(HV, device=device, dtype=torch.float32).uniform_(-4.0, -2.0),
        "dt_bias": 0.5 * torch.randn(HV, device=device, dtype=torch.float32),
        "out": torch.empty(B, T, HV, V, device=device, dtype=act),
    }
    return Problem(pool, indices, inputs)


# ----------------------------------------------------------------------------------------------
# Providers
# ----------------------------------------------------------------------------------------------

Factory = Callable[[Config, torch.Tensor, torch.Tensor, dict], Callable[[], torch.Tensor]]


@dataclass
class Provider:
    name: str
    make: Factory  # make(cfg, pool, indices, inputs) -> callable
    layouts: tuple[str, ...] = ("vk", "kv")
    source: str = ""  # where the implementation came from (version, file, hash)
    yardstick: bool = False  # a bandwidth reference, not a decode step: timed, never checked
    dense_pools_only: bool = False  # addresses slot i at i * HV * K * V: no page-strided pool

    def supports(self, cfg: Config) -> str | None:
        """None when the provider can run ``cfg``, else why not."""
        if cfg.layout not in self.layouts:
            return f"{self.name} supports state layouts {list(self.layouts)} only"
        if self.dense_pools_only and cfg.slot_pad:
            return f"{self.name} takes dense pools only (slot_pad={cfg.slot_pad})"
        return None


def _make_gdn_ops(cfg: Config, pool: torch.Tensor, indices: torch.Tensor, inputs: dict,
                  step_order: bool = False) -> Callable:
    """The public op; with ``step_order`` given the slot order, computed here, once, as an engine
    computes it once per step for all its layers."""
    import gdn_ops

    x = inputs
    order = gdn_ops.slot_order(indices) if step_order else None

    def step() -> torch.Tensor:
        return gdn_ops.fused_sigmoid_gating_delta_rule_update(
            x["A_log"], x["a"], x["dt_bias"], SOFTPLUS_BETA, SOFTPLUS_THRESHOLD,
            x["q"], x["k"], x["v"], x["b"], pool, indices, None, USE_QK_L2NORM,
            state_layout=cfg.layout, out=x["out"], initial_state_order=order,
        )

    return step


def launcher_provider(name: str, launch=None, config=None, pdl: bool | None = None, step_order: bool = False
                      ) -> Provider:
    """``gdn_ops.triton_decode.launch_decode`` (or a variant's ``launch``) called directly, with a
    fixed tile ``config`` and PDL setting (None: the shipped defaults); with ``step_order`` given
    the slot order computed when the call is built (``gdn_ops_step_order``)."""
    if launch is None:
        from gdn_ops.triton_decode import launch_decode as launch

    def make(cfg: Config, pool: torch.Tensor, indices: torch.Tensor, inputs: dict) -> Callable:
        import gdn_ops

        x = inputs
        order = {"order": gdn_ops.slot_order(indices)} if step_order else {}

        def step() -> torch.Tensor:
            launch(x["q"], x["k"], x["v"], x["a"], x["b"], x["A_log"], x["dt_bias"], pool, indices, x["out"],
                   scale=cfg.K**-0.5, use_qk_l2norm_in_kernel=USE_QK_L2NORM, state_layout=cfg.layout,
                   softplus_beta=SOFTPLUS_BETA, softplus_threshold=SOFTPLUS_THRESHOLD, config=config, pdl=pdl,
                   **order)
            return x["out"]

        return step

    return Provider(name, make)


def _gdn_ops_no_pdl_provider() -> Provider:
    """The same kernel launched without programmatic dependent launch: what a caller whose
    neighbouring kernels do not overlap gets (PDL's gain in this benchmark comes from successive
    decode calls overlapping each other)."""
    import gdn_ops

    provider = launcher_provider("gdn_ops_no_pdl", pdl=False)
    provider.source = f"gdn_ops {gdn_ops.__version__} ({source_digest()})"
    return provider


def _gdn_ops_provider() -> Provider:
    import gdn_ops

    return Provider("gdn_ops", _make_gdn_ops, source=f"gdn_ops {gdn_ops.__version__} ({source_digest()})")


def _gdn_ops_step_order_provider() -> Provider:
    import gdn_ops

    return Provider("gdn_ops_step_order", functools.partial(_make_gdn_ops, step_order=True),
                    source=f"gdn_ops {gdn_ops.__version__} ({source_digest()})")


def source_digest() -> str:
    """sha256 (12 hex) over gdn_ops/*.py: identifies the code that ran even without git."""
    h = hashlib.sha256()
    for path in sorted((REPO_ROOT / "gdn_ops").glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return "src-sha256:" + h.hexdigest()[:12]


# --- SGLang -------------------------------------------------------------------------------------

SGLANG_FILE_ENV = "GDN_BENCH_SGLANG_FILE"
SGLANG_PEER_FILE = REPO_ROOT / ".peers" / "sglang_fused_sigmoid_gating_recurrent.py"
SGLANG_WHEEL_PATH = ("srt", "layers", "attention", "fla", "fused_sigmoid_gating_recurrent.py")
# The arguments this harness passes, in SGLang's order; checked against the loaded signature.
SGLANG_EXPECTED_PARAMS = (
    "A_log", "a", "dt_bias", "softplus_beta", "softplus_threshold", "q", "k", "v", "b",
    "initial_state_source", "initial_state_indices", "scale", "use_qk_l2norm_in_kernel",
)


def _find_sglang_file() -> Path | None:
    """The env var, then ``.peers/``, then an installed sglang package (located, not imported)."""
    env = os.environ.get(SGLANG_FILE_ENV)
    if env:
        return Path(env)
    if SGLANG_PEER_FILE.is_file():
        return SGLANG_PEER_FILE
    try:
        spec = importlib.util.find_spec("sglang")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            candidate = Path(root).joinpath(*SGLANG_WHEEL_PATH)
            if candidate.is_file():
                return candidate
    return None


def _sglang_provider() -> Provider:
    path = _find_sglang_file()
    if path is None or not path.is_file():
        raise ImportError(
            f"SGLang's Triton file not found (set {SGLANG_FILE_ENV}, put it at {SGLANG_PEER_FILE}, "
            "or install sglang)"
        )
    spec = importlib.util.spec_from_file_location("_gdn_bench_sglang_peer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn = module.fused_sigmoid_gating_delta_rule_update
    params = tuple(inspect.signature(fn).parameters)
    if params[: len(SGLANG_EXPECTED_PARAMS)] != SGLANG_EXPECTED_PARAMS:
        raise ImportError(f"unexpected signature of SGLang's function in {path}: {params}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    label_file = path.with_name(path.name + ".source")
    label = label_file.read_text().strip() if label_file.is_file() else str(path)

    def make(cfg: Config, pool: torch.Tensor, indices: torch.Tensor, inputs: dict) -> Callable:
        x = inputs
        # Its kernel addresses slot idx at idx * HV * K * V and reads every input as contiguous.
        assert pool.is_contiguous() and indices.dtype == torch.int32
        for name in ("q", "k", "v", "a", "b"):
            assert x[name].is_contiguous(), name

        def step() -> torch.Tensor:
            return fn(
                x["A_log"], x["a"], x["dt_bias"], SOFTPLUS_BETA, SOFTPLUS_THRESHOLD,
                x["q"], x["k"], x["v"], x["b"], pool, indices, None, USE_QK_L2NORM,
            )

        return step

    return Provider("sglang", make, layouts=("vk",), source=f"{label} sha256:{digest}", dense_pools_only=True)


# --- flash-linear-attention ---------------------------------------------------------------------


def _fla_provider() -> Provider:
    import fla
    from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule as fn

    params = inspect.signature(fn).parameters
    # 0.6.x names the V-major state flag state_v_first; earlier releases transpose_state_layout.
    vk_flag = next((n for n in ("state_v_first", "transpose_state_layout") if n in params), None)
    gate_in_kernel = "use_gate_in_kernel" in params and "use_beta_sigmoid_in_kernel" in params
    layouts = ("vk", "kv") if vk_flag else ("kv",)

    def make(cfg: Config, pool: torch.Tensor, indices: torch.Tensor, inputs: dict) -> Callable:
        x = inputs
        rows = indices.to(torch.int64)
        kwargs = {vk_flag: True} if (vk_flag and cfg.layout == "vk") else {}
        if gate_in_kernel:
            kwargs.update(use_gate_in_kernel=True, A_log=x["A_log"], dt_bias=x["dt_bias"],
                          use_beta_sigmoid_in_kernel=True)

        def step() -> torch.Tensor:
            h0 = pool.index_select(0, rows)
            if gate_in_kernel:
                g, beta = x["a"], x["b"]
            else:
                g, beta = gdn_gating_reference(x["A_log"], x["a"], x["dt_bias"], x["b"],
                                               SOFTPLUS_BETA, SOFTPLUS_THRESHOLD)
            o, final = fn(
                x["q"], x["k"], x["v"], g=g, beta=beta, initial_state=h0, output_final_state=True,
                use_qk_l2norm_in_kernel=USE_QK_L2NORM, **kwargs,
            )
            pool.index_copy_(0, rows, final.to(pool.dtype))
            return o

        return step

    how = "in-kernel gating" if gate_in_kernel else "gating in PyTorch"
    return Provider("fla", make, layouts=layouts,
                    source=f"flash-linear-attention (fla-core) {fla.__version__}, {how}, gather/scatter added")


# --- plain PyTorch --------------------------------------------------------------------------------


def plain_step(A_log, a, dt_bias, q, k, v, b, pool, rows, state_layout: str) -> torch.Tensor:
    """Gather, fp32 gating and decode step of :mod:`gdn_ops.reference`, scatter back in place."""
    g, beta = gdn_gating_reference(A_log, a, dt_bias, b, SOFTPLUS_BETA, SOFTPLUS_THRESHOLD)
    o, new_state = delta_rule_step_reference(
        q, k, v, g, beta, pool.index_select(0, rows), None, USE_QK_L2NORM,
        state_layout=state_layout, compute_dtype=torch.float32,
    )
    pool.index_copy_(0, rows, new_state.to(pool.dtype))
    return o.to(q.dtype)


_compiled_step = None


def _compiled() -> Callable:
    global _compiled_step
    if _compiled_step is None:
        import torch._dynamo

        # Every (HV, dtype, layout) and the first batch > 1 compile anew; the default limit of 8
        # would silently fall back to eager part-way through the sweep.
        torch._dynamo.config.recompile_limit = 512
        torch._dynamo.config.accumulated_recompile_limit = 4096
        # dynamic=None: B = 1 specialises, and the batch dim turns dynamic at the next batch, as it
        # would in a server; one graph then serves every batch of a group.
        _compiled_step = torch.compile(plain_step, fullgraph=True)
    return _compiled_step


def _plain_factory(compiled: bool) -> Factory:
    def make(cfg: Config, pool: torch.Tensor, indices: torch.Tensor, inputs: dict) -> Callable:
        x = inputs
        rows = indices.to(torch.int64)
        fn = _compiled() if compiled else plain_step

        def step() -> torch.Tensor:
            return fn(x["A_log"], x["a"], x["dt_bias"], x["q"], x["k"], x["v"], x["b"], pool, rows, cfg.layout)

        return step

    return make


def _torch_compile_provider() -> Provider:
    return Provider("torch_compile", _plain_factory(True), source=f"torch.compile (torch {torch.__version__})")


def _eager_provider() -> Provider:
    return Provider("eager", _plain_factory(False), source=f"eager PyTorch {torch.__version__}")


def _make_copy(cfg: Config, pool: torch.Tensor, indices: torch.Tensor, inputs: dict) -> Callable:
    # As many bytes as the step moves: half read, half written, in one device-to-device copy.
    # Buffers of its own per call keep the cold-L2 rotation; random bytes, never zeros.
    # fp32 elements through PyTorch's elementwise kernel on the SMs: inside a CUDA graph,
    # ``copy_`` becomes a memcpy node, which ran at ~65% of the probe's bandwidth on an H200.
    n = cfg.bytes_per_call() // 8
    src = torch.randn(n, dtype=torch.float32, device=pool.device)
    dst = torch.empty_like(src)

    def step() -> torch.Tensor:
        torch.add(src, 0.0, out=dst)
        return inputs["out"]

    return step


def _copy_provider() -> Provider:
    return Provider("copy", _make_copy, source=f"torch.add(src, 0.0, out=dst), fp32 (torch {torch.__version__})",
                    yardstick=True)


PROVIDER_NAMES = ("gdn_ops", "gdn_ops_step_order", "gdn_ops_no_pdl", "sglang", "fla", "torch_compile", "eager",
                  "copy")
_LOADERS = {
    "gdn_ops_no_pdl": _gdn_ops_no_pdl_provider,
    "gdn_ops_step_order": _gdn_ops_step_order_provider,
    "copy": _copy_provider,
    "gdn_ops": _gdn_ops_provider,
    "sglang": _sglang_provider,
    "fla": _fla_provider,
    "torch_compile": _torch_compile_provider,
    "eager": _eager_provider,
}


def load_providers(names=PROVIDER_NAMES) -> tuple[dict[str, Provider], dict[str, str]]:
    """Providers that load, and for the rest why not (printed as notes, never fatal)."""
    loaded, notes = {}, {}
    for name in names:
        try:
            loaded[name] = _LOADERS[name]()
        except Exception as exc:  # a missing peer is a note, not a failure of the run
            notes[name] = f"{type(exc).__name__}: {exc}"
    return loaded, notes


# ----------------------------------------------------------------------------------------------
# Correctness check
# ----------------------------------------------------------------------------------------------

# Relative L2 error allowed against the float64 reference, in each (row, head) slice (rel_err). o is rounded to bf16 (~2e-3); an fp32
# state only meets fp32 rounding, a bf16 state its own rounding (~2e-3).
OUT_TOL = 1e-2
STATE_TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2, torch.float16: 2e-3}


@dataclass
class Reference:
    o: torch.Tensor  # float64 [B, T, HV, V]
    pool: torch.Tensor  # float64, the pool after the step


def reference(cfg: Config, problem: Problem) -> Reference:
    x = problem.inputs
    o, pool = fused_sigmoid_gating_delta_rule_reference(
        x["A_log"], x["a"], x["dt_bias"], SOFTPLUS_BETA, SOFTPLUS_THRESHOLD, x["q"], x["k"], x["v"], x["b"],
        problem.pool, problem.indices, None, USE_QK_L2NORM, state_layout=cfg.layout, compute_dtype=torch.float64,
    )
    return Reference(o, pool)


def rel_err(x: torch.Tensor, ref: torch.Tensor, lead: int = 2, chunk: int = 64) -> float:
    """The worst relative L2 error ``||x - ref|| / ||ref||`` (float64) over the slices that fix
    ``ref``'s first ``lead`` dims: a (slot, head) of a pool ``[slots, HV, ., .]`` with 2, a (row,
    token, head) of an output ``[B, T, HV, V]`` with 3. One figure over the whole tensor let an
    error confined to one head pass at large B. Chunked over dim 0 to bound temporaries; NaN if x
    isn't finite."""
    worst = torch.zeros((), dtype=torch.float64, device=ref.device)
    finite = torch.ones((), dtype=torch.bool, device=ref.device)
    for i in range(0, ref.shape[0], chunk):
        xs, rs = x[i : i + chunk].to(torch.float64).flatten(lead), ref[i : i + chunk].flatten(lead)
        finite &= torch.isfinite(xs).all()
        num, den = (xs - rs).square().sum(-1).sqrt(), rs.square().sum(-1).sqrt().clamp_min(1e-300)
        worst = torch.maximum(worst, (num / den).max())
    if not bool(finite):
        return float("nan")
    return float(worst)


@dataclass
class CheckResult:
    ok: bool
    err_o: float
    err_state: float
    message: str = ""


def _within_tolerance(cfg: Config, err_o: float, err_state: float) -> CheckResult:
    state_tol = STATE_TOL[cfg.state_dtype]
    ok = err_o <= OUT_TOL and err_state <= state_tol  # NaN compares False
    msg = "" if ok else f"rel err o {err_o:.2e} (tol {OUT_TOL:.0e}), state {err_state:.2e} (tol {state_tol:.0e})"
    return CheckResult(ok, err_o, err_state, msg)


def check(cfg: Config, provider: Provider, problem: Problem, ref: Reference) -> CheckResult:
    """Run one step on a copy of ``problem``'s pool (with its strides) and compare output and pool
    with ``ref``."""
    pool = torch.empty_strided(problem.pool.shape, problem.pool.stride(), dtype=problem.pool.dtype,
                               device=problem.pool.device).copy_(problem.pool)
    inputs = dict(problem.inputs)
    # Unwritten rows fail where the provider writes ``out``; one that allocates its output may meet
    # a recycled block holding a correct output (of the provider checked before): check_after, on a
    # replay, NaN-fills that output itself.
    inputs["out"] = torch.full_like(problem.inputs["out"], float("nan"))
    try:
        o = provider.make(cfg, pool, problem.indices, inputs)()
    except Exception as exc:
        return CheckResult(False, float("nan"), float("nan"), f"raised {type(exc).__name__}: {exc}")
    if tuple(o.shape) != tuple(ref.o.shape):
        return CheckResult(False, float("nan"), float("nan"), f"output shape {list(o.shape)} != {list(ref.o.shape)}")
    err_o, err_state = rel_err(o, ref.o, lead=3), rel_err(pool, ref.pool)
    return _within_tolerance(cfg, err_o, err_state)


def check_after(cfg: Config, problems: list[Problem], run: Callable[[], object],
                outputs: list[Callable[[], torch.Tensor]], numbers: list[int] | None = None) -> CheckResult:
    """Whether ``run()`` steps each of ``problems`` once: the slots it leaves in each pool and the
    output ``outputs[i]()`` gives for problem ``i`` (``[B, T, HV, V]``, NaN-filled before the run
    and read after it) against the float64 reference of one step from that pool as it is before
    the run; the worst error over the problems. For a captured graph of one call a problem:
    ``run`` replays it, ``outputs`` give the tensors its calls returned under capture. Every call
    is checked, since a race under PDL may hit any call after the first. ``numbers``: the calls'
    numbers in the graph, for the message (their positions in ``problems`` by default)."""
    numbers = list(range(len(problems))) if numbers is None else numbers
    if not len(problems) == len(outputs) == len(numbers):
        raise ValueError(f"check_after: one output and number a problem (got {len(problems)} problems, "
                         f"{len(outputs)} outputs, {len(numbers)} numbers)")
    befores = [Problem(p.pool[p.indices.long()], torch.arange(p.indices.numel(), device=p.indices.device,
                                                             dtype=torch.int32), p.inputs) for p in problems]
    for output in outputs:
        output().fill_(float("nan"))  # rows the run leaves unwritten fail
    run()
    err_o = err_state = 0.0
    for i, (problem, before, output) in enumerate(zip(problems, befores, outputs)):
        ref, o = reference(cfg, before), output()
        if tuple(o.shape) != tuple(ref.o.shape):
            return CheckResult(False, float("nan"), float("nan"),
                               f"call {numbers[i]}: output shape {list(o.shape)} != {list(ref.o.shape)}")
        result = _within_tolerance(cfg, rel_err(o, ref.o, lead=3), rel_err(problem.pool[problem.indices.long()], ref.pool))
        if not result.ok:
            return CheckResult(False, result.err_o, result.err_state, f"call {numbers[i]}: {result.message}")
        err_o, err_state = max(err_o, result.err_o), max(err_state, result.err_state)
    return CheckResult(True, err_o, err_state)


class LastOutput:
    """A call that keeps what it last returned (``output``): once captured, the tensor that the
    graph's replays write."""

    def __init__(self, call: Callable[[], torch.Tensor]) -> None:
        self.call, self.output = call, None

    def __call__(self) -> torch.Tensor:
        self.output = self.call()
        return self.output


# The pools' copies a replay check holds at once: past this, it checks the first two calls and the
# last (a 2 GB pool a call at B=1024, 8 calls, beside every peer's graph, would crowd an 80 GB card).
CHECK_SNAPSHOT_BYTES = 4 << 30


def capture_checked(cfg: Config, provider: Provider, problems: list[Problem], capture: Callable,
                    check: bool = True) -> tuple[object, list[Callable], CheckResult | None]:
    """``provider``'s call on each of ``problems``, captured by ``capture`` (``timing.capture_graph``)
    into one graph; with ``check``, unless the provider is a yardstick (no decode step), one replay
    of the graph checked (:func:`check_after`) on every call, or on the first two and the last where
    the pools' copies would pass :data:`CHECK_SNAPSHOT_BYTES`. The graph, its calls (whatever they
    allocated must outlive the replays) and the check's result (None unchecked)."""
    calls = [LastOutput(provider.make(cfg, p.pool, p.indices, p.inputs)) for p in problems]
    graph = capture(calls)
    if not check or provider.yardstick:
        return graph, calls, None
    n = len(problems)
    which = list(range(n)) if n * cfg.state_bytes <= CHECK_SNAPSHOT_BYTES else sorted({0, min(1, n - 1), n - 1})
    result = check_after(cfg, [problems[i] for i in which], graph.replay,
                         [lambda call=calls[i]: call.output for i in which], numbers=which)
    return graph, calls, result


def passing(cfg: Config, providers: list[Provider], problem: Problem, ref: Reference) -> tuple[list[Provider], dict[str, str]]:
    """:func:`check` each provider: those that pass, and the failure message of each that does not."""
    passed, failed = [], {}
    for provider in providers:
        result = check(cfg, provider, problem, ref)
        if result.ok:
            passed.append(provider)
        else:
            failed[provider.name] = result.message
    return passed, failed


def _cpu_self_check() -> int:
    """Check every loadable provider on CPU at a small geometry (Triton peers need TRITON_INTERPRET=1)."""
    torch.manual_seed(0)
    providers, notes = load_providers()
    for name, why in notes.items():
        print(f"  {name}: skipped ({why})")
    interp = os.environ.get("TRITON_INTERPRET") == "1"
    failures = 0
    for state_dtype in (torch.float32, torch.bfloat16):
        for layout in ("vk", "kv"):
            for B in (1, 3):
                cfg = Config(tp=0, HK=2, HV=4, K=16, V=32, B=B, state_dtype=state_dtype, layout=layout)
                problem = make_problem(cfg, "cpu")
                ref = reference(cfg, problem)
                for name, provider in providers.items():
                    if provider.supports(cfg) is not None or provider.yardstick:
                        continue
                    if name in ("sglang", "fla", "gdn_ops_no_pdl") and not interp:
                        continue
                    res = check(cfg, provider, problem, ref)
                    failures += not res.ok
                    print(f"{'ok  ' if res.ok else 'FAIL'} {name:14s} {cfg.label():48s} "
                          f"err o {res.err_o:.1e} state {res.err_state:.1e} {res.message}")
    if not interp:
        print("note: sglang and fla were not run (set TRITON_INTERPRET=1 to run their kernels on CPU)")
    return failures


if __name__ == "__main__":
    raise SystemExit(1 if _cpu_self_check() else 0)
