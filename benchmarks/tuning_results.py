"""The JSON file a tuning or probe script writes: its records under a header naming the GPU (and
the name gdn_ops looked its tuning tables up by), torch and Triton versions, the date and the copy
bandwidth measured in the same run."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import torch
import triton

from gdn_ops.triton_decode_tma import tuning_gpu_name


def write_results(out: Path, tag: str, records: list, copy_bandwidth: float, **extra) -> Path:
    """Write ``<out>/<tag>.json`` (``extra`` goes into the header) and say so; returns its path."""
    header = {"device": torch.cuda.get_device_name(), "tuning_gpu": tuning_gpu_name(None),
              "torch": torch.__version__, "triton": triton.__version__,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "copy_bandwidth_Bps": copy_bandwidth, **extra}
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{tag}.json"
    path.write_text(json.dumps({"header": header, "records": records}, indent=1))
    print(f"copy bandwidth {copy_bandwidth / 1e12:.3f} TB/s on {header['device']}; wrote {path}")
    return path
