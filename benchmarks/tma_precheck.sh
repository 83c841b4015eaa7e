# EXPERIMENT helper: check each TMA spec alone (a bad launch kills the process's CUDA context);
# prints the specs that pass, for tma_probe.
B=${B:-32}
for s in "$@"; do
  if timeout 90 python3 -m benchmarks.tma_probe --batches $B --dtypes ${DTYPES:-bfloat16 float32} --specs "$s" --out /tmp/pc --tag pc > /tmp/pc.log 2>&1 && ! grep -q error /tmp/pc.log; then echo "$s"; else echo "FAIL $s: $(grep -o 'Error: [^\\]*' /tmp/pc.log | head -1) $(grep -o 'error[^}]*' /tmp/pc.log | head -2)" >&2; fi
done
