#!/usr/bin/env bash
# Nsight Compute on the decode kernel (per-tile or persistent) at benchmark points, one report per point.
#   benchmarks/ncu_decode.sh OUT_DIR "512 bf16 vk" "32 fp32 vk" "512 bf16 kv tma_gate_prefetch" ...
# (a fourth word names a TMA_VARIANTS entry of benchmarks/variants.py to profile instead)
# Clocks are left alone (--clock-control none); L2 is flushed before the profiled launch.
set -u
out=$1; shift
mkdir -p "$out"
for point in "$@"; do
    read -r batch dtype layout variant <<<"$point"
    name="ncu_B${batch}_${dtype}_${layout}${variant:+_$variant}"
    ncu --clock-control none --kernel-name regex:_decode_ --launch-skip 2 --launch-count 1 \
        --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
        --section SchedulerStats --section MemoryWorkloadAnalysis \
        --metrics 'regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio' \
        python3 -m benchmarks.profile_decode --batch "$batch" --state-dtype "$dtype" --layout "$layout" \
        ${variant:+--tma-variant "$variant"} >"$out/$name.txt" 2>&1
    echo "== $point (rc $?)"
    grep -E "Duration|DRAM Throughput|Registers Per|Achieved Occupancy|Theoretical Occupancy|Issued Warp|No Eligible|Warp Cycles Per Issued|Block Limit Reg|Stall|stall" "$out/$name.txt" | sed 's/  */ /g' | head -24
done
