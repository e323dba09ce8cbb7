"""Stage long runs for a commit, so that they resume from any fresh checkout (the brief's rule).

    python tools/snapshot_runs.py experiments/runs/ROOT [ROOT ...] [--max-mb N]   # then: git commit

For every run directory under the roots: its small files (config, metrics, status, sweep options,
pictures) are staged with the paths in config.json and status.json made relative to the repository;
a run still going (or stopped) has its newest loadable checkpoint staged, and its older checkpoints
taken out of the index; a finished run has its final checkpoint staged (the weights the metric-noise
scoring and the pretrained models read). ``--max-mb N`` leaves out checkpoints larger than N MB
(FactorVAE's is 66 MB: its 6 x 1000 discriminator and Adam's moments), saying so. Nothing is
committed; it prints what it staged.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMALL = ("config.json", "metrics.jsonl", "status.json", "sweep_options.json", "scores.json", "eval.json",
         "curves.png", "reconstructions.png", "samples.png", "traversals.png")


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout


def relative(path: str) -> str:
    p = Path(path)
    return str(p.relative_to(ROOT)) if p.is_absolute() and p.is_relative_to(ROOT) else path


def relativise(run: Path) -> None:
    for name, key in (("config.json", "out"), ("status.json", "checkpoint")):
        f = run / name
        if not f.is_file():
            continue
        data = json.loads(f.read_text())
        if isinstance(data.get(key), str) and data[key] != relative(data[key]):
            data[key] = relative(data[key])
            f.write_text(json.dumps(data, indent=2) + "\n")


def snapshot(run: Path, max_mb: float | None = None) -> str:
    relativise(run)
    git("add", "-f", *[str(run / n) for n in SMALL if (run / n).is_file()])
    status = run / "status.json"
    state = json.loads(status.read_text()).get("state", "unknown") if status.is_file() else "new"
    ckpts = sorted((run / "checkpoints").glob("step_*.pt"))
    keep = ckpts[-1:] if ckpts else []
    tracked = git("ls-files", str(run / "checkpoints")).split()
    for t in tracked:
        if ROOT / t not in keep:
            git("rm", "--cached", "-q", t)
    if keep and max_mb is not None and keep[0].stat().st_size > max_mb * 1e6:
        size = keep[0].stat().st_size / 1e6
        return f"{run.relative_to(ROOT)}: {state}, checkpoint {keep[0].name} left out ({size:.0f} MB > {max_mb:g} MB)"
    if keep:
        git("add", "-f", str(keep[0]))
    return f"{run.relative_to(ROOT)}: {state}, checkpoint {keep[0].name if keep else 'none'}"


def main(argv: list[str]) -> int:
    max_mb = None
    if "--max-mb" in argv:
        i = argv.index("--max-mb")
        max_mb, argv = float(argv[i + 1]), argv[:i] + argv[i + 2:]
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    for root in argv:
        for config in sorted(Path(root).resolve().rglob("config.json")):
            print(snapshot(config.parent, max_mb))
    for root in argv:
        sweep_status = Path(root).resolve() / "sweep_status.json"
        if sweep_status.is_file():
            git("add", "-f", str(sweep_status))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
