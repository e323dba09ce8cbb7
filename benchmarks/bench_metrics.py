"""Metric speed: the FactorVAE score under the paper's protocol ("chyvae": L = 200, 800 + 800 votes,
std over 5,000 images, so 325,000 images rendered and encoded) for a d = 10 model on
CorrelatedEllipses, end to end, as training's --eval-every and `python -m chyvae_ext.evaluate` run it.

Target of issue 4: at most 30 s on this 2-core CPU (at most 2 s on an H100/H200).

    python benchmarks/bench_metrics.py [--run RUN_DIR] [--device cpu] [--precisions bf16,fp32] [--repeats 3]
                                      [--json PATH]

With --run the run's last checkpoint is scored (so that the scores of the precisions can be
compared on a trained model); otherwise a freshly initialised CHyVAE. Also times the same protocol
with a free encoder (the data side alone: factor sampling and rendering).

--others NAMES (comma-separated, from chyvae_ext.metrics.METRICS) also times those metrics at
disentanglement_lib's study constants, by name as training and evaluate run them (the first
precision only).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from chyvae_ext.data import get_dataset
from chyvae_ext.metrics import factor_vae_score, make_encoder, parse_metrics
from chyvae_ext.metrics import score as score_by_name
from chyvae_ext.models import CHyVAE


def timed(fn, repeats: int) -> tuple[list[float], dict]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="a run directory whose last checkpoint to score")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precisions", default="bf16,fp32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--others", default="", help="other metrics to time by name, e.g. sap,beta_vae")
    args = parser.parse_args(argv)
    others = parse_metrics(args.others) if args.others else []
    if args.run:
        from chyvae_ext.evaluate import load_run

        model, config, ckpt, step = load_run(args.run, device=args.device)
        source = f"{ckpt} (step {step})"
    else:
        model = CHyVAE(10, 1, 128).to(args.device).eval()
        source = "freshly initialised CHyVAE (d = 10, h = 128)"
    dataset = get_dataset("correlated_ellipses")
    rows = []
    data_times, _ = timed(lambda: factor_vae_score(lambda x: x[:, 0, 32, :10].clone(), dataset, seed=0), args.repeats)
    rows.append({"what": "data only (free encoder)", "precision": "-", "seconds": data_times, "score": None})
    for precision in args.precisions.split(","):
        encode = make_encoder(model, precision=precision)
        times, out = timed(lambda encode=encode: factor_vae_score(encode, dataset, seed=0), args.repeats)
        rows.append(
            {
                "what": "factor_vae, chyvae protocol",
                "precision": precision,
                "seconds": times,
                "score": out["eval_accuracy"],
            }
        )
    first_precision = args.precisions.split(",")[0]
    for name in others:
        encode = make_encoder(model, precision=first_precision)
        times, (summary, _) = timed(
            lambda encode=encode, name=name: score_by_name(encode, dataset, [name], seed=0), args.repeats
        )
        headline = next(iter(summary.values()))
        rows.append({"what": name, "precision": first_precision, "seconds": times, "score": headline})
    threads = torch.get_num_threads()
    print(f"model: {source}; device {args.device}, {threads} threads, {platform.processor() or platform.machine()}")
    print(f"{'what':30s} {'precision':9s} {'median s':>9s} {'min s':>7s} {'score':>7s}")
    for r in rows:
        score = "" if r["score"] is None else f"{r['score']:.4f}"
        print(
            f"{r['what']:30s} {r['precision']:9s} {statistics.median(r['seconds']):9.1f} {min(r['seconds']):7.1f} "
            f"{score:>7s}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"model": source, "device": args.device, "threads": threads, "rows": rows, "torch": torch.__version__},
                f,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
