"""The explorer's decode request, server-side: one latent vector in, one PNG out.

Target of issue 14: at most 30 ms on the CPU at d = 10. Timed through the app itself (Starlette's
TestClient: parsing z, decoding, encoding the PNG, the response), and its parts alone, on a run
directory (default: a freshly initialised model of the default architecture, whose decode costs
what a trained one's does), median of repeats after warm-up.

    python benchmarks/bench_explore.py [--run RUN_DIR] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def median_ms(fn, repeats: int = 200) -> float:
    for _ in range(10):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="a run directory (default: a one-step run of the default architecture)")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    from starlette.testclient import TestClient

    from chyvae_ext.explore import create_app, load_runs, png

    run = args.run
    if run is None:  # trained by the command line, as a user's run is (the benchmark does not import the trainer)
        run = str(Path(tempfile.mkdtemp()) / "run")
        subprocess.run([sys.executable, "-m", "chyvae_ext.train", "--steps", "1", "--eval-every", "1", "--metrics",
                        "none", "--precision", "fp32", "--out", run], check=True, stdout=subprocess.DEVNULL)
    explored = load_runs([run])[0]
    client = TestClient(create_app([explored]))
    z = ",".join(f"{d['mean']:.5f}" for d in client.get("/api/runs").json()[0]["dims"])
    zt = explored.parse_z(z)[None]
    server_ms = []

    def request():
        response = client.get("/api/runs/0/decode", params={"z": z})
        server_ms.append(float(response.headers["Server-Timing"].split("dur=")[1]))

    whole = median_ms(request)
    rows = [
        ("server side: the endpoint, z parsed to PNG bytes (Server-Timing)", statistics.median(server_ms[10:])),
        ("GET /api/runs/0/decode through TestClient (HTTP client included)", whole),
    ]
    rows += [
        ("decode alone (model.decode)", median_ms(lambda: explored.decode(zt))),
        ("decode + PNG encoding", median_ms(lambda: png(explored.decode(zt)))),
    ]
    threads = torch.get_num_threads()
    print(f"CPU: {cpu_model()}, torch {torch.__version__}, {threads} thread(s), d = {explored.z_dim}")
    print("| what | median (ms) |\n|---|---:|")
    for name, ms in rows:
        print(f"| {name} | {ms:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "cpu": cpu_model(), "torch": torch.__version__, "threads": threads, "z_dim": explored.z_dim,
            "rows": [{"what": n, "median_ms": ms} for n, ms in rows],
        }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
