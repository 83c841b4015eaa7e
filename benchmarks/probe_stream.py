"""Data-movement ceilings of the ways a decode kernel can stream a kv pool (no arithmetic).

Written when the persistent bf16 kv kernel (``gluon_decode_kv``) ran within 0.5% of a copy through
its own TMA pipeline and 6-11% short of the device copy. What it found (one short-lived program per
head moves the bytes 1.5-2.5% faster than any persistent ring, NOTES.md) became the kernel of one
program per tile (``gluon_decode_kv_tile``). It times, in one run and beside the copy, streams that
differ only in how the bytes move, each through every addressed head of the pool, in place,
through the shuffled slot indices:

* ``tma:h{H}:b{N}:p{P}:lag{L}[:oop][:seq]``: a persistent Gluon kernel, ``P`` programs per SM, each a
  ring of ``N`` shared-memory buffers; a buffer takes ``H`` whole heads per TMA copy (one box of
  ``[1, H, K, V // C, C]`` in the chunked view of ``gluon_decode_kv``) and leaves by a TMA store
  straight from that buffer; up to ``L`` stores stay in flight before a buffer is refilled.
  ``oop`` writes to a second pool instead of in place; ``seq`` (here and for ``reg``) takes the
  slots in ascending order instead of the shuffled indices.
* ``async:w{W}:b{N}:p{P}``: a persistent Gluon kernel, ``P`` programs of ``W`` warps per SM, each
  head through cp.async (16 bytes per thread, like a plain load) into a ring of ``N`` buffers,
  then to registers and out by plain 16-byte stores: the data movement of a register-path decode.
* ``reg:w{W}[:c{E}][:x{G}][:oop][:seq]``: one Triton program per head (per ``E``-element chunk of a
  head with ``c{E}``), ``W`` warps, the bytes loaded into registers in 16-byte vectors and stored
  back (times one, so the store is not of the loaded registers verbatim). Small chunks give the
  geometry of PyTorch's copy kernel; with ``oop`` and ``seq`` as well, the copy's access pattern
  too. ``x{G}`` runs the programs across the batch rows, ``G`` at a time in each row (the same
  places of every row before the next ones), an order that needs no sort of the slots.
* ``decode[:seq][:plan]``: the shipped decode step (``launch_decode`` with its defaults), for scale;
  ``seq`` gives it the slots in ascending order, which tells what the shuffle costs a decode;
  ``plan`` gives it its slot order computed before capture (``initial_state_order``).

Each stream is checked to leave the pool (or copy it) unchanged before timing. Timing is that of
``tune_decode``: cold-L2 CUDA-graph replays, all providers interleaved.

    python -m benchmarks.probe_stream --batches 256 1024 --tag probe_stream
    python -m benchmarks.probe_stream --tp 4 --batches 512 --tag probe_stream_tp4   # HK=4, HV=8
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import triton
import triton.language as tl
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma

from benchmarks.providers import Config, Provider, launcher_provider, load_providers
from benchmarks.run import GEOMETRY
from benchmarks.timing import capture_graph, copy_bandwidth
from benchmarks.tune_decode import add_timing_arguments, time_as_asked, timing_options
from benchmarks.tuning_results import write_results
from gdn_ops.gluon_decode_kv import _cta_barrier, _shared_layout, chunk_columns
from gdn_ops.triton_decode_tma import sm_count


@gluon.jit
def _tma_stream_kernel(src_desc, dst_desc, indices_ptr, num_tiles, HV_BOXES: gl.constexpr,
                       HEADS: gl.constexpr, K: gl.constexpr, NC: gl.constexpr, C: gl.constexpr,
                       NUM_BUF: gl.constexpr, LAG: gl.constexpr):
    """Tile n of a program (its n-th box of HEADS heads) fills buffer n % NUM_BUF; after its store
    is issued, at most LAG stores stay unread, and the buffer whose store was just read is
    refilled with the tile NUM_BUF - LAG further on."""
    bufs = gl.allocate_shared_memory(src_desc.dtype, [NUM_BUF, 1, HEADS, K, NC, C], src_desc.layout)
    bars = gl.allocate_shared_memory(gl.int64, [NUM_BUF, 1], mbarrier.MBarrierLayout())
    for j in gl.static_range(NUM_BUF):
        mbarrier.init(bars.index(j), count=1)
    pid = gl.program_id(0)
    step = gl.num_programs(0)
    for j in gl.static_range(NUM_BUF):
        _issue_box(pid + j * step, num_tiles, src_desc, indices_ptr, bufs.index(j), bars.index(j), HV_BOXES, HEADS)
    i = 0
    for tile in range(pid, num_tiles, step):
        buf = i % NUM_BUF
        mbarrier.wait(bars.index(buf), (i // NUM_BUF) & 1)
        slot = gl.load(indices_ptr + tile // HV_BOXES)
        tma.async_copy_shared_to_global(dst_desc, [slot, (tile % HV_BOXES) * HEADS, 0, 0, 0], bufs.index(buf))
        tma.store_wait(LAG)
        _cta_barrier()
        free = i - LAG  # the tile whose store has now been read out of its buffer
        refill = pid + (free + NUM_BUF) * step
        _issue_box(gl.where(free >= 0, refill, num_tiles), num_tiles, src_desc, indices_ptr,
                   bufs.index((i + NUM_BUF - LAG) % NUM_BUF), bars.index((i + NUM_BUF - LAG) % NUM_BUF),
                   HV_BOXES, HEADS)
        i += 1  # noqa: SIM113 (Gluon loops have no enumerate)
    tma.store_wait(0)
    for j in gl.static_range(NUM_BUF):
        mbarrier.invalidate(bars.index(j))


@gluon.jit
def _issue_box(tile, num_tiles, src_desc, indices_ptr, buf, bar, HV_BOXES: gl.constexpr, HEADS: gl.constexpr):
    live = tile < num_tiles
    slot = gl.load(indices_ptr + tile // HV_BOXES, mask=live, other=0)
    mbarrier.expect(bar, src_desc.block_type.nbytes, pred=live)
    tma.async_copy_global_to_shared(src_desc, [slot, (tile % HV_BOXES) * HEADS, 0, 0, 0], bar, buf, pred=live)


@gluon.jit
def _async_stream_kernel(pool_ptr, indices_ptr, num_tiles, HV: gl.constexpr, K: gl.constexpr, V: gl.constexpr,
                         WARPS: gl.constexpr, NUM_BUF: gl.constexpr):
    """Each head through cp.async into a ring of NUM_BUF shared-memory buffers, back to registers and
    out by plain 16-byte stores. Every thread copies and reads back exactly its own bytes (one layout
    for both), so no barrier is needed: each thread runs its own pipeline."""
    VEC: gl.constexpr = 128 // pool_ptr.dtype.element_ty.primitive_bitwidth
    LANES_V: gl.constexpr = V // VEC
    layout: gl.constexpr = gl.BlockedLayout([1, VEC], [32 // LANES_V, LANES_V], [WARPS, 1], [1, 0])
    smem_layout: gl.constexpr = gl.SwizzledSharedLayout(VEC, 1, 1, [1, 0])
    bufs = gl.allocate_shared_memory(pool_ptr.dtype.element_ty, [NUM_BUF, K, V], smem_layout)
    rows = gl.arange(0, K, layout=gl.SliceLayout(1, layout))
    cols = gl.arange(0, V, layout=gl.SliceLayout(0, layout))
    offs = rows[:, None] * V + cols[None, :]
    pid = gl.program_id(0)
    step = gl.num_programs(0)
    for j in gl.static_range(NUM_BUF - 1):
        _async_issue(pid + j * step, num_tiles, pool_ptr, indices_ptr, offs, bufs.index(j), HV, K, V)
    i = 0
    for tile in range(pid, num_tiles, step):
        _async_issue(tile + (NUM_BUF - 1) * step, num_tiles, pool_ptr, indices_ptr, offs,
                     bufs.index((i + NUM_BUF - 1) % NUM_BUF), HV, K, V)
        async_copy.wait_group(NUM_BUF - 1)
        x = bufs.index(i % NUM_BUF).load(layout)
        slot = gl.load(indices_ptr + tile // HV).to(gl.int64)
        gl.store(pool_ptr + (slot * HV + tile % HV) * (K * V) + offs, x)
        i += 1  # noqa: SIM113 (Gluon loops have no enumerate)
    async_copy.wait_group(0)


@gluon.jit
def _async_issue(tile, num_tiles, pool_ptr, indices_ptr, offs, buf, HV: gl.constexpr, K: gl.constexpr,
                 V: gl.constexpr):
    """cp.async of ``tile``'s head into ``buf``, as one commit group (empty past the last tile)."""
    live = tile < num_tiles
    slot = gl.load(indices_ptr + tile // HV, mask=live, other=0).to(gl.int64)
    async_copy.async_copy_global_to_shared(buf, pool_ptr + (slot * HV + tile % HV) * (K * V) + offs,
                                           mask=(offs >= 0) & live)
    async_copy.commit_group()


@triton.jit
def _reg_stream_kernel(src_ptr, dst_ptr, indices_ptr, scale, rows, HV: tl.constexpr, HEAD: tl.constexpr,
                       CHUNK: tl.constexpr, ACROSS: tl.constexpr):
    """Program i moves chunk i % (HEAD // CHUNK) of addressed head i // (HEAD // CHUNK); with
    ``ACROSS`` = G > 0 the programs go across the ``rows`` instead: G programs in one row, the next
    G at the same place of the next row, and after the last row on to the row's next G."""
    CHUNKS: tl.constexpr = HEAD // CHUNK
    program = tl.program_id(0)
    if ACROSS > 0:
        group = program // ACROSS
        program = (group % rows) * (HV * CHUNKS) + (group // rows) * ACROSS + program % ACROSS
    head = program // CHUNKS
    slot = tl.load(indices_ptr + head // HV).to(tl.int64)
    start = (slot * HV + head % HV) * HEAD + (program % CHUNKS) * CHUNK
    offs = start + tl.arange(0, CHUNK)
    x = tl.load(src_ptr + offs)
    tl.store(dst_ptr + offs, (x.to(tl.float32) * scale).to(x.dtype))


def in_order(indices: torch.Tensor) -> torch.Tensor:
    """Slots in ascending order instead of shuffled: each row's heads follow the previous row's."""
    return torch.arange(indices.numel(), device=indices.device, dtype=indices.dtype)


def tma_provider(heads: int, num_buf: int, programs_per_sm: int, lag: int, options: tuple[str, ...] = ()) -> Provider:
    name = ":".join([f"tma:h{heads}:b{num_buf}:p{programs_per_sm}:lag{lag}", *options])
    out_of_place = "oop" in options

    def make(cfg: Config, pool: torch.Tensor, indices: torch.Tensor, inputs: dict):
        if "seq" in options:
            indices = in_order(indices)
        slots, HV, K, V = pool.shape
        C = chunk_columns(V, pool.element_size())
        block = [1, heads, K, V // C, C]
        layout = _shared_layout(tuple(block), pool.dtype)
        from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

        def descriptor(t):
            return TensorDescriptor(t, [slots, HV, K, V // C, C], [*t.stride()[:3], C, 1], block, layout)

        dst = torch.empty_like(pool) if out_of_place else pool
        src_desc, dst_desc = descriptor(pool), descriptor(dst)
        num_tiles = cfg.B * HV // heads
        grid = (min(num_tiles, programs_per_sm * sm_count(pool.device.index or 0)),)

        def step():
            _tma_stream_kernel[grid](src_desc, dst_desc, indices, num_tiles, HV_BOXES=HV // heads, HEADS=heads,
                                     K=K, NC=V // C, C=C, NUM_BUF=num_buf, LAG=lag, num_warps=1)
            return dst

        return step

    return Provider(name, make, layouts=("kv",), yardstick=True)


def async_provider(num_warps: int, num_buf: int, programs_per_sm: int, options: tuple[str, ...] = ()) -> Provider:
    def make(cfg: Config, pool: torch.Tensor, indices: torch.Tensor, inputs: dict):
        if "seq" in options:
            indices = in_order(indices)
        _, HV, K, V = pool.shape
        num_tiles = cfg.B * HV
        grid = (min(num_tiles, programs_per_sm * sm_count(pool.device.index or 0)),)

        def step():
            _async_stream_kernel[grid](pool, indices, num_tiles, HV=HV, K=K, V=V, WARPS=num_warps, NUM_BUF=num_buf,
                                       num_warps=num_warps)
            return pool

        return step

    return Provider(":".join([f"async:w{num_warps}:b{num_buf}:p{programs_per_sm}", *options]), make, yardstick=True)


def reg_provider(num_warps: int, options: tuple[str, ...] = ()) -> Provider:
    chunk = next((int(o[1:]) for o in options if o.startswith("c")), None)
    across = next((int(o[1:]) for o in options if o.startswith("x")), 0)

    def make(cfg: Config, pool: torch.Tensor, indices: torch.Tensor, inputs: dict):
        if "seq" in options:
            indices = in_order(indices)
        _, HV, K, V = pool.shape
        dst = torch.empty_like(pool) if "oop" in options else pool
        size = chunk or K * V
        if (K * V) % size:
            raise ValueError(f"reg stream: chunk c{size} must divide a head's {K * V} elements")
        if across and (HV * (K * V // size)) % across:
            raise ValueError(f"reg stream: x{across} must divide a row's {HV * (K * V // size)} programs")
        grid = (cfg.B * HV * (K * V // size),)

        def step():
            _reg_stream_kernel[grid](pool, dst, indices, 1.0, cfg.B, HV=HV, HEAD=K * V, CHUNK=size, ACROSS=across,
                                     num_warps=num_warps)
            return dst

        return step

    return Provider(":".join([f"reg:w{num_warps}", *options]), make, yardstick=True)


def reg_stream(spec: str) -> Provider:
    """:func:`reg_provider` from its spec, ``WARPS[:cCHUNK][:xGROUP][:oop][:seq]`` (``--reg``'s syntax)."""
    warps, *options = spec.split(":")
    return reg_provider(int(warps), tuple(options))


def decode_provider(options: tuple[str, ...] = ()) -> Provider:
    """The shipped decode step; with ``seq`` through the slots in ascending order; with ``plan``
    given its slot order computed before capture (``initial_state_order``, which an engine
    computes once per step for all its layers)."""
    base = launcher_provider("decode", step_order="plan" in options)
    if "seq" not in options:
        return Provider(":".join(["decode", *options]), base.make)

    def make(cfg: Config, pool: torch.Tensor, indices: torch.Tensor, inputs: dict):
        return base.make(cfg, pool, in_order(indices), inputs)

    return Provider(":".join(["decode", *options]), make)


def check_stream(cfg: Config, provider: Provider, device: str = "cuda") -> str | None:
    """None if one call leaves the addressed heads' bytes where they belong (unchanged in place, or
    copied to the second pool), else what went wrong. On CUDA also replayed from a CUDA graph, as
    it is timed."""
    pool = torch.randn((cfg.B + 3, *cfg.slot_shape), device=device).to(cfg.state_dtype)
    indices = torch.randperm(cfg.B + 3, device=device)[: cfg.B].to(torch.int32)
    before = pool.clone()
    step = provider.make(cfg, pool, indices, {})
    out = step()
    if device == "cuda":
        torch.cuda.synchronize()
        capture_graph([step, step]).replay()
        torch.cuda.synchronize()
    if not torch.equal(pool, before):
        return "the pool changed"
    addressed = (in_order(indices) if "seq" in provider.name.split(":") else indices).long()
    if not torch.equal(out[addressed], before[addressed]):
        return "the addressed heads were not written back"
    return None


def parser() -> argparse.ArgumentParser:
    """The script's options."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.probe_stream")
    ap.add_argument("--batches", type=int, nargs="*", default=[256, 1024])
    ap.add_argument("--tma", nargs="*", default=["1:2:2:0", "1:2:2:1", "1:4:1:0", "1:4:1:2", "1:6:1:2", "2:3:1:0",
                                                 "2:3:1:1", "1:2:2:0:oop", "2:3:1:1:oop", "1:2:2:0:seq"],
                    metavar="HEADS:BUFFERS:PROGRAMS_PER_SM:LAG[:oop][:seq]")
    ap.add_argument("--reg", nargs="*", default=["2", "4", "8", "4:seq"], metavar="WARPS[:cCHUNK][:xGROUP][:oop][:seq]")
    ap.add_argument("--async", dest="async_", nargs="*", default=["4:2:3", "4:3:2", "8:2:3", "4:4:1", "8:3:2"],
                    metavar="WARPS:BUFFERS:PROGRAMS_PER_SM[:seq]")
    ap.add_argument("--dtype", default="bfloat16", help="the pool's dtype")
    ap.add_argument("--decode", nargs="*", default=["decode"], metavar="decode[:seq][:plan]",
                    help="the shipped decode step, in the shuffled or (:seq) the ascending slot order; :plan given its "
                         "slot order computed before capture")
    ap.add_argument("--layout", default="kv", choices=["kv", "vk"], help="the decode's state layout")
    ap.add_argument("--tp", type=int, default=1, choices=sorted(GEOMETRY), help="Qwen3-Next's heads at this TP")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--tag", default="probe_stream")
    ap.add_argument("--mem-budget-gb", type=float, default=24.0)
    add_timing_arguments(ap)
    return ap


def main() -> None:
    args = parser().parse_args()
    bw = copy_bandwidth()
    peers, _ = load_providers(("copy",))
    streams = [tma_provider(*map(int, s.split(":")[:4]), tuple(s.split(":")[4:])) for s in args.tma]
    streams += [async_provider(*map(int, s.split(":")[:3]), tuple(s.split(":")[3:])) for s in args.async_]
    streams += [reg_stream(s) for s in args.reg]
    records = []
    for B in args.batches:
        HK, HV = GEOMETRY[args.tp]
        cfg = Config(tp=args.tp, HK=HK, HV=HV, K=128, V=128, B=B, state_dtype=getattr(torch, args.dtype),
                     layout=args.layout)
        errors = {}
        for p in streams:
            print(f"checking {p.name}", flush=True)
            errors[p.name] = check_stream(cfg, p)
        runnable = [p for p in streams if errors[p.name] is None] + [peers["copy"]]
        decodes = [decode_provider(tuple(spec.split(":")[1:])) for spec in args.decode]
        times, replay_failed = time_as_asked(cfg, runnable + decodes, args, checked=[p.name for p in decodes])
        errors.update(replay_failed)
        row = {"B": B, "bytes": cfg.bytes_per_call(), "state_bytes": 2 * cfg.state_bytes,
               "errors": {n: e for n, e in errors.items() if e}, "results": {}}
        for name, us in times.items():
            moved = cfg.bytes_per_call() if name == "copy" or name.startswith("decode") else 2 * cfg.state_bytes
            row["results"][name] = {"us": us, "pct_of_copy": 100 * moved / (us * 1e-6) / bw}
        print(f"B={B:5d}  " + "  ".join(f"{n} {r['us']:.1f} us ({r['pct_of_copy']:.1f}%)"
                                        for n, r in row["results"].items()), row["errors"] or "", flush=True)
        records.append(row)
    write_results(args.out, args.tag, records, bw, triton_path=triton.__file__, **timing_options(args))


if __name__ == "__main__":
    main()
