"""``python -m chyvae_ext.evaluate RUN_DIR``: score a trained run and refresh its pictures.

Loads the run's last checkpoint (or ``--checkpoint``), computes the held-out negative ELBO on the
same fixed batch training uses and the requested disentanglement metrics (``--metrics``, default
factor_vae; any of factor_vae, mig, sap, dci, or all) on the run's dataset, and writes:

    eval.json          step, checkpoint, held-out terms, metric summary and details, timings, and the
                       posterior variances on the held-out images (posterior_variances)
    reconstructions.png, samples.png, traversals.png, traversals.gif   (refreshed)

Training's ``--eval-every`` computes its metrics with the same functions
(:func:`chyvae_ext.metrics.score` on :func:`chyvae_ext.metrics.make_encoder`).
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import time
import warnings
from pathlib import Path

import torch

from ._checks import ArgumentParser, check_int
from .build import build_model, fixed_batches, held_out_terms, open_dataset
from .config import check_config, run_config
from .data.base import GroundTruthDataset
from .metrics import METRICS, PROTOCOLS, make_encoder, parse_metrics, score
from .plots import save_model_pictures
from .runfiles import EVAL, Run


def load_run(run_dir: str | Path, *, checkpoint: str | Path | None = None, device: str | None = None):
    """(model in eval mode, its TrainConfig, the checkpoint's path, its step) for a run directory.
    The checkpoint is read with torch.load(weights_only=True): tensors and plain values only, so a
    crafted file cannot run code; one that needs more is refused with a ValueError naming it. Without
    ``checkpoint``, the newest one that loads (a damaged newer one is skipped with a warning naming it,
    and left where it is)."""
    root = Path(run_dir)
    config = run_config(root)
    if device is not None:
        config = dataclasses.replace(config, device=device)
    check_config(config.resolved())  # the device among the rest, with training's messages
    dev = torch.device(config.device)
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        if not checkpoint.is_file():
            raise ValueError(f"--checkpoint {checkpoint}: no such file")
        state = _training_state(checkpoint, dev)
    else:
        ckpts = Run(root).checkpoints()
        if not ckpts:
            raise ValueError(f"RUN_DIR {root}: no checkpoint in {Run(root).ckpt_dir}")
        for checkpoint in reversed(ckpts):
            try:
                state = _training_state(checkpoint, dev)
                break
            except ValueError as exc:
                warnings.warn(f"skipping {exc}", RuntimeWarning, stacklevel=2)
        else:
            raise ValueError(f"RUN_DIR {root}: none of its {len(ckpts)} checkpoint(s) in {Run(root).ckpt_dir} "
                             "can be loaded (each one's warning says why)")
    model = build_model(config, state.get("channels", 1)).to(dev)
    model.load_state_dict(state["model"])
    return model.eval(), config, checkpoint, int(state["step"])


def _training_state(checkpoint: Path, dev: torch.device) -> dict:
    """The training checkpoint at ``checkpoint``, plain data only; a ValueError naming it otherwise."""
    try:
        state = torch.load(checkpoint, map_location=dev, weights_only=True)
    except Exception as exc:  # torch.load's failures: UnpicklingError (not plain data), RuntimeError, EOFError...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"checkpoint {checkpoint} cannot be loaded as plain tensors and values "
                         f"({type(exc).__name__}: {reason})") from exc
    if not isinstance(state, dict) or not {"model", "step"} <= state.keys():
        raise ValueError(f"checkpoint {checkpoint} is not a training checkpoint (no model and step)")
    return state


def posterior_variances(model: torch.nn.Module, images: torch.Tensor) -> dict | None:
    """How far the posterior q(z|x) shrinks on ``images``, in eval mode, float64: per latent dimension
    the smallest and the median posterior variance C_jj over the images (``var_min``, ``var_median``),
    and the smallest eigenvalue of C over them (``eig_min``). C is the model's own: CHyVAE's L L^T
    (with ``posterior_jitter``, the jitter's floor included), exp(logvar) on the diagonal for the
    others. None for an ensemble."""
    if getattr(model, "members", None) is not None:
        return None
    was_training = model.training
    model.eval()
    with torch.no_grad():
        mu, spread = model.posterior(images)
    model.train(was_training)
    if spread.dim() == mu.dim():  # a diagonal posterior's log-variances
        var = spread.double().exp()
        eig_min = float(var.min())
    else:  # a full covariance's Cholesky factor
        L = spread.double()
        cov = L @ L.mT
        var = torch.diagonal(cov, dim1=-2, dim2=-1)
        eig_min = float(torch.linalg.eigvalsh(cov)[:, 0].min())
    return {"var_min": var.min(0).values.tolist(), "var_median": var.median(0).values.tolist(), "eig_min": eig_min}


def evaluate_run(
    run_dir: str | Path,
    *,
    metrics: str | list[str] = "factor_vae",
    protocol: str = "chyvae",
    seed: int = 0,
    device: str | None = None,
    precision: str | None = None,
    checkpoint: str | Path | None = None,
    pictures: bool = True,
    progress=None,
) -> dict:
    """Score the run in ``run_dir``; writes and returns the eval.json record. Raises ValueError for bad options.

    ``progress``: a function given a line before and after each metric (the CLI prints them).
    """
    try:
        names = parse_metrics(metrics)
    except ValueError as exc:
        raise ValueError(f"--{exc}") from None
    check_int("--seed", seed)
    if seed >= 2**63:
        raise ValueError(f"--seed must be below 2**63 (torch's generators take 64-bit seeds), got {seed}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    if precision not in (None, "fp32", "bf16"):
        raise ValueError(f"--precision must be fp32 or bf16, got {precision!r}")
    model, config, ckpt, step = load_run(run_dir, checkpoint=checkpoint, device=device)
    precision = precision or config.precision
    try:
        dataset = open_dataset(config, fixed=False)  # the metrics and the held-out images come from the generator
    except ValueError as exc:
        raise ValueError(f"the run's dataset: {exc}") from exc
    if names and not isinstance(dataset, GroundTruthDataset):
        raise ValueError(
            f"--metrics {','.join(names)} needs a dataset with ground-truth factors; {config.dataset} has none "
            "(use --metrics none for the held-out ELBO and the pictures)"
        )
    root = Path(run_dir)
    t0 = time.perf_counter()
    dev = next(model.parameters()).device
    fixed, held_out = fixed_batches(dataset, dev)
    record = {
        "run": str(root),
        "checkpoint": str(ckpt),
        "step": step,
        "model": config.model,
        "dataset": config.dataset,
        "protocol": protocol,
        "seed": seed,
        "precision": precision,
        "held_out": held_out_terms(model, held_out, bf16=precision == "bf16"),
    }
    posterior = posterior_variances(model, held_out)
    if posterior is not None:
        record["posterior"] = posterior
    encode = make_encoder(model, precision=precision)
    summary, details = score(encode, dataset, names, protocol=protocol, seed=seed, progress=progress)
    record["metrics"] = summary
    if "factor_vae" in summary:
        record["chance"] = {"factor_vae": 1 / dataset.num_factors}  # a random dimension-to-factor guess
    record["details"] = details
    if pictures:
        save_model_pictures(model, fixed, held_out, root, bf16=precision == "bf16")
    record["seconds"] = time.perf_counter() - t0
    Run(root).write_json(EVAL, record)
    return record


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM ends an evaluation as Ctrl-C does


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="python -m chyvae_ext.evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", type=Path)
    parser.add_argument("--metrics", default="factor_vae", help=f"comma-separated: {', '.join(METRICS)}, all or none")
    parser.add_argument("--protocol", default="chyvae", help=f"FactorVAE metric protocol: {', '.join(PROTOCOLS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", help="default: the run's device")
    parser.add_argument("--precision", help="fp32 or bf16 (default: the run's)")
    parser.add_argument("--checkpoint", type=Path, help="default: the run's last checkpoint")
    parser.add_argument("--no-pictures", dest="pictures", action="store_false")
    args = parser.parse_args(argv)
    old_term = signal.signal(signal.SIGTERM, _interrupt)
    try:
        record = evaluate_run(
            args.run_dir,
            metrics=args.metrics,
            protocol=args.protocol,
            seed=args.seed,
            device=args.device,
            precision=args.precision,
            checkpoint=args.checkpoint,
            pictures=args.pictures,
            progress=lambda line: print(line, file=sys.stderr, flush=True),
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: {args.run_dir} was not evaluated (its eval.json is as it was)", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, old_term)
    scores = "  ".join(f"{k} {v:.4f}" for k, v in record["metrics"].items())
    if "factor_vae" in record["metrics"]:
        scores += f" ({record['protocol']} protocol; chance {record['chance']['factor_vae']:.2f})"
    if "posterior" in record:
        scores += f"  smallest posterior variance {min(record['posterior']['var_min']):.3g}"
    print(
        f"{record['run']} step {record['step']}: held-out neg_elbo {record['held_out']['neg_elbo']:.2f} "
        f"recon {record['held_out']['recon']:.2f}  {scores}  ({record['seconds']:.1f} s) -> "
        f"{args.run_dir / EVAL}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
