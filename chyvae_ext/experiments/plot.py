"""The paper's figures from the CSVs that ``collect`` writes.

- ``tradeoff.png`` (the paper's Figs. 2-3): disentanglement (FactorVAE score) against held-out
  reconstruction error, one point per model and hyperparameter value: the mean over seeds with
  error bars of one standard deviation on both axes. Up and to the left is better.
- ``by_step.png`` (Fig. 4): the FactorVAE score, MIG (when logged) and the reconstruction error
  against training step, mean over seeds with a band of one standard deviation. A step that fewer of
  a setting's seeds have reached than its others (runs still going) is drawn with an open marker:
  its mean is not the same seeds' mean, so a jump there need not be a change.
- ``time.png`` (Fig. 13): training time per 1,000 steps per model (median over runs).
- ``traversals_<model>.png`` and ``.gif`` (Fig. 5, with ``runs_root``): the traversals of each model's best run
  (highest score), drawn afresh from its checkpoint, rows sorted by use.

Where ``collect`` scored the untrained floor, the metric panels draw it as a dashed grey line: a
score at that line is what an untrained encoder gets. With ``at_step``, the trade-off plots every
run's evaluation at that step (runs still going included) instead of the finished runs' last one.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from .collect import STATES_ANY, mean_std, read_csv, rows_at_step, summarise

MODEL_NAMES = {  # in the order the figures list the models
    "vae": "VAE", "betavae": "beta-VAE", "betatcvae": "beta-TCVAE", "factorvae": "FactorVAE", "dipvae1": "DIP-VAE-I",
    "dipvae2": "DIP-VAE-II", "annealedvae": "AnnealedVAE", "chyvae": "CHyVAE",
}
COLOURS = {"chyvae": "tab:red", "betavae": "tab:blue", "factorvae": "tab:green", "vae": "tab:gray",
           "betatcvae": "tab:purple", "dipvae1": "tab:orange", "dipvae2": "tab:brown", "annealedvae": "tab:olive"}
MARKERS = ["o", "s", "^", "D", "v", "P", "X"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _floor(rows: list[dict], key: str) -> float | None:
    """The untrained rows' mean of ``key`` (None without them)."""
    vals = [float(r[key]) for r in rows if r.get("state") == "untrained" and key in r]
    return statistics.fmean(vals) if vals else None


def _draw_floor(ax, value: float | None) -> None:
    if value is not None:
        ax.axhline(value, color="grey", ls="--", lw=1, label=f"untrained ({value:.3f})")


def plot_tradeoff(rows: list[dict], out: Path, metric: str = "factor_vae", states=("finished", "untrained")) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    summary = summarise(rows, (metric, "recon"), states=states)
    per_model: dict[str, int] = {}
    for s in summary:
        if f"{metric}_mean" not in s or "recon_mean" not in s:
            continue
        i = per_model.setdefault(s["model"], 0)
        per_model[s["model"]] += 1
        ax.errorbar(
            s["recon_mean"],
            s[f"{metric}_mean"],
            xerr=s["recon_std"],
            yerr=s[f"{metric}_std"],
            fmt=MARKERS[i % len(MARKERS)],
            color=COLOURS.get(s["model"], "k"),
            capsize=3,
            ms=7,
            label=f"{MODEL_NAMES.get(s['model'], s['model'])} {s['hyper']}={s['value']:g} (n={s['seeds']})",
        )
    ax.set_xlabel("held-out reconstruction error (nats, BCE summed over pixels)")
    ax.set_ylabel(f"{metric} (mean +- std over seeds)")
    ax.set_title("disentanglement vs reconstruction")
    _draw_floor(ax, _floor(rows, metric))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def fewer_seeds(counts: list[int]) -> list[bool]:
    """For one setting's evaluation steps in order, given how many seeds each has: which have fewer than
    the most any step has (the steps only some seeds have reached yet)."""
    most = max(counts, default=0)
    return [n < most for n in counts]


def plot_by_step(rows: list[dict], out: Path, metric: str = "factor_vae", floor_rows: list[dict] = ()) -> None:
    plt = _plt()
    keys = [metric] + (["mig"] if metric != "mig" and any("mig" in r for r in rows) else []) + ["recon"]
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4.2))
    groups: dict[tuple, dict[float, list[dict]]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["hyper"], float(r["value"])), {}).setdefault(float(r["step"]), []).append(r)
    per_model: dict[str, int] = {}
    any_partial = False
    for (model, hyper, value), by_step in sorted(groups.items()):
        i = per_model.setdefault(model, 0)
        per_model[model] += 1
        steps = sorted(by_step)
        for ax, key in zip(axes, keys, strict=True):
            vals = [[float(r[key]) for r in by_step[s] if key in r] for s in steps]
            keep = [j for j, v in enumerate(vals) if v]
            if not keep:
                continue
            xs = [steps[j] for j in keep]
            mean, std = zip(*(mean_std(vals[j]) for j in keep), strict=True)
            partial = fewer_seeds([len(vals[j]) for j in keep])
            style = {"marker": MARKERS[i % len(MARKERS)], "color": COLOURS.get(model, "k"), "ms": 5, "alpha": 0.9}
            ax.plot(xs, mean, markevery=[k for k, p in enumerate(partial) if not p],
                    label=f"{MODEL_NAMES.get(model, model)} {hyper}={value:g}", **style)
            if any(partial):
                ax.plot([x for x, p in zip(xs, partial, strict=True) if p],
                        [m for m, p in zip(mean, partial, strict=True) if p], linestyle="none", mfc="white", **style)
                any_partial = True
            ax.fill_between(
                xs,
                [m - s for m, s in zip(mean, std, strict=True)],
                [m + s for m, s in zip(mean, std, strict=True)],
                color=COLOURS.get(model, "k"),
                alpha=0.08,
            )
    for ax, key in zip(axes[:-1], keys, strict=False):
        ax.set_ylabel(f"{key} (mean over seeds, band: +- std)")
        _draw_floor(ax, _floor(floor_rows, key))
    axes[-1].set_ylabel("held-out reconstruction error (nats)")
    for ax in axes:
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    if any_partial:
        axes[0].plot([], [], linestyle="none", marker="o", mfc="white", color="k", label="open: fewer seeds so far")
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def plot_time(rows: list[dict], out: Path) -> None:
    plt = _plt()
    per_model: dict[str, list[float]] = {}
    for r in rows:
        if "sec_per_1000_steps" in r:
            per_model.setdefault(r["model"], []).append(float(r["sec_per_1000_steps"]))
    models = [m for m in MODEL_NAMES if m in per_model] + sorted(m for m in per_model if m not in MODEL_NAMES)
    fig, ax = plt.subplots(figsize=(5, 3.6))
    medians = [statistics.median(per_model[m]) for m in models]
    ax.bar([MODEL_NAMES.get(m, m) for m in models], medians, color=[COLOURS.get(m, "grey") for m in models])
    for x, v in enumerate(medians):
        ax.text(x, v, f"{v:.0f} s", ha="center", va="bottom")
    ax.set_ylabel("seconds per 1,000 training steps (median over runs)")
    ax.set_title("training time")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def plot_best_traversals(
    rows: list[dict], runs_root: Path, out: Path, metric: str = "factor_vae", at_step: int | None = None
) -> list[Path]:
    """``traversals_<model>.png`` in ``out`` for each model's run with the highest ``metric`` among ``rows``,
    drawn from its checkpoint of ``at_step`` (default: its last) under ``runs_root`` (rows sorted by use,
    see chyvae_ext.plots)."""
    import torch

    from ..build import fixed_batches, open_dataset
    from ..evaluate import load_run
    from ..plots import save_traversals
    from ..runfiles import Run

    best: dict[str, dict] = {}
    for r in rows:
        if r.get("state") == "untrained" or metric not in r:
            continue
        if r["model"] not in best or float(r[metric]) > float(best[r["model"]][metric]):
            best[r["model"]] = r
    paths = []
    for model, r in sorted(best.items()):
        run_dir = runs_root / r["run"]
        ckpt = Run(run_dir).checkpoint(at_step)
        if ckpt is None:
            continue
        net, config, _, _ = load_run(run_dir, checkpoint=ckpt, device="cpu")
        fixed, held_out = fixed_batches(open_dataset(config, fixed=False), torch.device("cpu"))
        paths.append(out / f"traversals_{model}.png")
        save_traversals(net, fixed, held_out, paths[-1], out / f"traversals_{model}.gif")
    return paths


def plot_all(
    csv_path: str | Path,
    out_dir: str | Path | None = None,
    metric: str = "factor_vae",
    *,
    at_step: int | None = None,
    runs_root: str | Path | None = None,
) -> list[Path]:
    """Draw the figures from ``results.csv`` (and ``results_by_step.csv`` beside it); returns their paths.

    ``at_step``: the trade-off at that evaluation step (runs still going included); ``runs_root``: also
    the best run's traversals per model (the run directories collect read)."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise ValueError(f"CSV {csv_path}: no such file (write it with: python -m chyvae_ext.experiments collect ROOT)")
    rows = read_csv(csv_path)
    if not rows:
        raise ValueError(f"CSV {csv_path}: no rows")
    missing = [k for k in ("model", "hyper", "value") if k not in rows[0]]
    if missing:
        raise ValueError(f"CSV {csv_path}: not a collect results file (no column {missing[0]})")
    out = Path(out_dir) if out_dir is not None else csv_path.parent
    out.mkdir(parents=True, exist_ok=True)
    by_step = csv_path.with_name("results_by_step.csv")
    step_rows = read_csv(by_step) if by_step.is_file() else []
    floor = [r for r in rows if r.get("state") == "untrained"]
    paths = [out / "tradeoff.png", out / "time.png"]
    if at_step is None:
        plot_tradeoff(rows, paths[0], metric)
    else:
        at = rows_at_step(step_rows, at_step)
        if not at:
            raise ValueError(f"--at-step {at_step}: no run has an evaluation at that step in {by_step}")
        plot_tradeoff(at + floor, paths[0], metric, states=STATES_ANY)
    plot_time(rows, paths[1])
    if step_rows:
        paths.append(out / "by_step.png")
        plot_by_step(step_rows, paths[-1], metric, floor)
    if runs_root is not None:
        pick = rows_at_step(step_rows, at_step) if at_step is not None else rows
        paths += plot_best_traversals(pick, Path(runs_root), out, metric, at_step)
    return paths
