#!/usr/bin/env bash
# Nsight Compute on the decode kernel (per-tile or persistent) at benchmark points, one report per point.
#   benchmarks/ncu_decode.sh OUT_DIR "512 bf16 vk" "32 fp32 vk" "512 bf16 kv g64:4:2:4 gluon_tma_store" ...
# (further words: a configuration in tune_tma's spec syntax, which has colons, e.g. s8:1:sort for the
# split-K kv prototype or c2:128:4:8:8:sort for the cluster one, and/or a VARIANTS / TMA_VARIANTS / GLUON_VARIANTS entry of
# benchmarks/variants.py to profile instead;
# tile:SPEC, a tile of the per-tile Triton kernel in tune_decode's syntax, e.g. "1024 bf16 vk tile:16:1:sort";
# or reg:SPEC, probe_stream's register stream of that spec on the same pool, e.g. "1024 fp32 vk reg:1:c1024")
# Clocks are left alone (--clock-control none); L2 is flushed before the profiled launch.
set -u
out=$1; shift
mkdir -p "$out"
for point in "$@"; do
    read -r batch dtype layout extra <<<"$point"
    spec=""; variant=""; stream=""; tile=""
    for word in $extra; do
        if [[ $word == reg:* ]]; then stream=${word#reg:}
        elif [[ $word == tile:* ]]; then tile=${word#tile:}
        elif [[ $word == *:* ]]; then spec=$word; else variant=$word; fi
    done
    name="ncu_B${batch}_${dtype}_${layout}${spec:+_${spec//:/-}}${variant:+_$variant}${stream:+_reg-${stream//:/-}}${tile:+_tile-${tile//:/-}}"
    ncu --clock-control none --kernel-name 'regex:_decode_|_reg_stream_|_kv_split_|_kv_cluster_' --launch-skip 2 --launch-count 1 \
        --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
        --section SchedulerStats --section MemoryWorkloadAnalysis \
        --metrics 'regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio' \
        python3 -m benchmarks.profile_decode --batch "$batch" --state-dtype "$dtype" --layout "$layout" \
        ${spec:+--spec "$spec"} ${tile:+--tile "$tile"} ${variant:+--variant "$variant"} ${stream:+--stream "$stream"} >"$out/$name.txt" 2>&1
    echo "== $point (rc $?)"
    grep -E "Duration|DRAM Throughput|Registers Per|Achieved Occupancy|Theoretical Occupancy|Issued Warp|No Eligible|Warp Cycles Per Issued|Block Limit Reg|Stall|stall" "$out/$name.txt" | sed 's/  */ /g' | head -24
done
