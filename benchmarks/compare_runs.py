"""Held-out reconstruction error of trained runs, for comparing e.g. a bf16 run with an fp32 run.

Loads each run's last checkpoint, evaluates in float32 on the same held-out images (a materialised
set from a seed not used in training), and prints BCE summed over pixels (mean over images) from
the posterior mean, with each run's last logged training reconstruction error.

    python benchmarks/compare_runs.py runs/a runs/b [--n 2000] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from chyvae_ext.build import build_model
from chyvae_ext.config import TrainConfig
from chyvae_ext.data import get_dataset
from chyvae_ext.models import reconstruction_error


@torch.no_grad()
def held_out_recon(run: Path, n: int) -> dict:
    config = TrainConfig(**json.loads((run / "config.json").read_text()))
    ckpt = sorted((run / "checkpoints").glob("step_*.pt"))[-1]
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    ds = get_dataset(config.dataset, config.data_root)
    images = ds.random_images(n, __import__("numpy").random.default_rng(987_654))
    model = build_model(config, ds.channels)
    model.load_state_dict(state["model"])
    model.eval()
    x = torch.from_numpy(images)
    errors = torch.cat([reconstruction_error(model.decode_logits(model.encode(b)), b) for b in x.split(250)])
    last = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines() if r.strip()][-1]
    return {
        "run": str(run),
        "precision": config.precision,
        "step": state["step"],
        "held_out_recon": float(errors.mean()),
        "last_train_recon": last["recon"],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    rows = [held_out_recon(r, args.n) for r in args.runs]
    print(f"{'run':28} {'precision':9} {'step':>6} {'held-out recon':>15} {'last train recon':>17}")
    for r in rows:
        print(
            f"{r['run']:28} {r['precision']:9} {r['step']:6d} {r['held_out_recon']:15.2f} {r['last_train_recon']:17.2f}"
        )
    base = rows[-1]["held_out_recon"]
    for r in rows[:-1]:
        print(f"{r['run']} vs {rows[-1]['run']}: {100 * (r['held_out_recon'] / base - 1):+.2f}% held-out recon")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
