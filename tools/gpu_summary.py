"""gpu_suite.sh's summary.json from its steps.tsv: every step's exit status and seconds so far.

    python tools/gpu_summary.py OUTDIR SUITE_T0 [--final]

Written after every step (no torch import: a few milliseconds), so a suite stopped at its lease's limit
still has one; ``--final`` adds the torch version, the device and the benchmarks' JSON, and exits 1
unless every step passed.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

BENCHMARKS = ("bench_elbo_cuda.json", "bench_train_cuda.json", "bench_train_cuda_compiled.json",
              "bench_ensemble_cuda.json")


def summary(out: Path, t0: float, final: bool) -> dict:
    steps = []
    tsv = out / "steps.tsv"
    for line in (tsv.read_text().splitlines() if tsv.is_file() else []):
        name, rc, secs = line.split("\t")
        steps.append({"step": name, "exit": int(rc), "seconds": round(float(secs), 1)})
    result = {"passed": all(s["exit"] == 0 for s in steps), "complete": final,
              "total_seconds": round(time.time() - t0, 1), "steps": steps}
    if final:
        try:
            import torch

            result["torch"] = torch.__version__
            result["device"] = torch.cuda.get_device_name()
        except Exception as exc:  # noqa: BLE001  (a summary whatever went wrong)
            result["device_error"] = repr(exc)
        for name in BENCHMARKS:
            p = out / name
            if p.exists():
                result[name.removesuffix(".json")] = json.loads(p.read_text())
    return result


def main(argv: list[str]) -> int:
    out, t0, final = Path(argv[0]), float(argv[1]), "--final" in argv[2:]
    result = summary(out, t0, final)
    tmp = out / ".summary.json.tmp"
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out / "summary.json")
    if final:
        print(json.dumps({k: v for k, v in result.items() if k in ("steps", "passed")}, indent=1))
        return 0 if result["passed"] else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
