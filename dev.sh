#!/usr/bin/env bash
# One entry point for a fresh machine:  ./dev.sh demo | ./dev.sh test [pytest args...] | ./dev.sh gpu
# Uses the python3 that already has torch (e.g. a GPU machine's image, offline); otherwise makes
# .venv with torch (from the configured package index) and the test tools.
set -euo pipefail
cd "$(dirname "$0")"

TORCH_PIN="torch==2.13.0"      # the version CI uses
TRITON_PIN="triton==3.7.1"     # the release torch 2.13 pins; runs kernels in its interpreter on CPU
TEST_DEPS=(pytest pytest-xdist hypothesis expecttest "transformers==5.24.0")  # the release the pass tests were written against

if python3 -c "import torch" 2>/dev/null; then
    PY=python3
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    if [ ! -x .venv/bin/python ]; then
        python3 -m venv .venv
        .venv/bin/pip install -q --upgrade pip
        .venv/bin/pip install -q "$TORCH_PIN" "$TRITON_PIN" numpy
        .venv/bin/pip install -q -e .
    fi
    PY=.venv/bin/python
fi

cmd="${1:-demo}"
shift || true
case "$cmd" in
    demo)
        exec "$PY" -m gdn_ops.demo "$@"
        ;;
    test)
        missing=()
        for mod in pytest xdist hypothesis expecttest transformers; do
            "$PY" -c "import $mod" 2>/dev/null || missing+=("$mod")
        done
        if [ ${#missing[@]} -gt 0 ]; then
            # offline machines (the lent GPUs) carry what they lack as wheels instead; see README
            "$PY" -m pip install -q "${TEST_DEPS[@]}" || echo "dev.sh: could not install ${missing[*]} (offline?)" >&2
        fi
        exec "$PY" -m pytest "$@"  # pyproject's testpaths: tests/, unless files are named
        ;;
    gpu)
        # The suite on a GPU machine: the gpu-marked tests plus every other test, which then runs the
        # ops on CUDA (the Triton kernel); all of tests/ or the files named. Refuses to run without a GPU.
        "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'dev.sh gpu: no CUDA device')"
        exec "$PY" -m pytest "$@"
        ;;
    *)
        echo "usage: ./dev.sh demo [demo args] | ./dev.sh test [pytest args] | ./dev.sh gpu [pytest args]" >&2
        exit 2
        ;;
esac
