"""The SASS of the per-tile Triton decode kernel as the launcher specialises one launch, compiled for
sm_90 on the CPU with the installed Triton's ptxas and cuobjdump, one instruction a line without
addresses: to show without a GPU that a change leaves the machine code as it was, or makes it the
code of a variant that was measured and tested on a GPU (NOTES.md, sixty-second session).

    python benchmarks/sass_of_launch.py --tile 16:1:of:et > shipped.sass
    git worktree add /tmp/old dc068ca
    python benchmarks/sass_of_launch.py --tree /tmp/old --variant early_tile_volatile --tile 16:1:of > old.sass
    diff old.sass shipped.sass

Run as a file, not with ``-m``: ``--tree`` puts another checkout's ``gdn_ops``, ``benchmarks`` and
test helpers first on the path before anything of them is imported. Prints the instruction and
register counts to stderr.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", type=Path, default=REPO, help="the checkout whose kernel (and variants) to compile")
    ap.add_argument("--variant", default="", help="a variant of benchmarks/variants.py in that checkout")
    ap.add_argument("--tile", default="16:1:of", metavar="BV:WARPS[:MAXNREG][:new][:sort][:of][:et]",
                    help="the DecodeConfig launched, as tune_decode's tile specs (that checkout's parse_tile)")
    ap.add_argument("--layout", choices=["kv", "vk"], default="kv")
    ap.add_argument("--state", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--tp", type=int, choices=[1, 4], default=1, help="Qwen3-Next's heads at this TP (16/32 or 4/8)")
    ap.add_argument("--no-pdl", action="store_true", help="record the launch without PDL")
    return ap


def sass_lines(cubin: bytes) -> list[str]:
    """The instructions of ``cubin``, one a line, as cuobjdump prints them without the addresses."""
    from triton.backends.nvidia.compiler import get_ptxas

    cuobjdump = Path(get_ptxas(90).path).with_name("cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([str(cuobjdump), "-sass", f.name], check=True, capture_output=True, text=True).stdout
    return [re.sub(r"\s*/\*\s*0x[0-9a-f]+\s*\*/\s*$", "", m.group(1)).strip()
            for m in re.finditer(r"^\s+/\*[0-9a-f]{4}\*/\s+(.*)$", text, re.MULTILINE)]


def record_decode_launch(module, layout: str, state_dtype, act_dtype, B: int, heads: tuple[int, int], config,
                         slot_pad: int = 0, pdl: bool = True) -> tuple[tuple, dict]:
    """The positional arguments and keywords that ``module.launch_decode`` (the per-tile launcher
    or a variant of it) passes its ``_decode_kernel`` for ``config`` on a one-token case on CPU:
    ``heads`` (HK, HV) of K = V = 128, contiguous operands, a pool with slots ``slot_pad`` elements
    further apart than dense. The kernel (and the slot-order kernel a sorting tile runs first) is
    replaced by a recorder; nothing runs. Needs the checkout's ``tests/`` on the path."""
    from decode_case import DecodeCase, build
    from tile_kernel_checks import kernel_calls

    import gdn_ops.triton_slot_order as slot_order

    HK, HV = heads
    case = DecodeCase(B=B, T=1, HK=HK, group=HV // HK, K=128, V=128, state_layout=layout, state_dtype=state_dtype,
                      act_dtype=act_dtype, slot_pad=slot_pad, pool_guard=0, out_given=True)
    inp = build(case, "cpu")
    with kernel_calls(module, "_decode_kernel") as calls, kernel_calls(slot_order, "_slot_order_kernel"):
        module.launch_decode(inp.q, inp.k, inp.v, inp.a, inp.b, inp.A_log, inp.dt_bias, inp.pool.view, inp.indices,
                             inp.out.view, scale=0.125, use_qk_l2norm_in_kernel=True, state_layout=layout,
                             config=config, pdl=pdl)
    (_, args, kwargs), = calls
    return args, kwargs


def main(argv: list[str] | None = None) -> list[str]:
    args = parser().parse_args(argv)
    tree = args.tree.resolve()
    if not (tree / "gdn_ops").is_dir() or not (tree / "tests" / "decode_case.py").is_file():
        raise SystemExit(f"--tree {args.tree}: expected a gdn-ops checkout (gdn_ops/ and tests/decode_case.py)")
    sys.path[:0] = [str(tree / "tests"), str(tree)]
    import torch
    from sm90_compile import compile_launch_sm90, ptxas_report

    import gdn_ops.triton_decode as shipped
    from benchmarks.tune_decode import parse_tile

    module = shipped
    if args.variant:
        from benchmarks.variants import load_variant

        module = load_variant(args.variant)
    config = parse_tile(args.tile, 128)
    state_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.state]
    kernel_args, kwargs = record_decode_launch(module, args.layout, state_dtype, torch.bfloat16, args.batch,
                                               (16, 32) if args.tp == 1 else (4, 8), config, pdl=not args.no_pdl)
    compiled = compile_launch_sm90(module._decode_kernel, list(kernel_args), kwargs)
    lines = sass_lines(compiled.asm["cubin"])
    registers = re.search(r"Used (\d+) registers", ptxas_report(compiled.asm["ptx"])).group(1)
    print(f"{len(lines)} instructions, {registers} registers", file=sys.stderr)
    return lines


if __name__ == "__main__":
    print("\n".join(main()))
