"""``python -m chyvae_ext.explore RUN_DIR [RUN_DIR ...]``: a page to look at trained runs.

Every latent dimension gets a slider and the decoded image follows it; click a dataset image to
start from its code; a traversal row shows the dimension under the pointer; CHyVAE shows the
clicked image's posterior correlation (L L^T) and nu; the run's config, the evaluation of the
checkpoint shown (its step's) and the curves sit beside it; several runs side by side take the same
slider values (``link``).

    python -m chyvae_ext.explore runs/chyvae-correlated_ellipses-seed0 [--port 8000] [--host 127.0.0.1]
                                 [--allow-host NAME] [--checkpoint PATH] [--device cpu]

Needs ``pip install chyvae_ext[explore]`` (Starlette and uvicorn). It binds 127.0.0.1 unless
``--host`` says otherwise, answers only requests whose Host is a loopback name, the ``--host`` address
or an ``--allow-host`` name (a page elsewhere cannot reach it through DNS rebinding), serves only the
runs named on the command line (a run id in a URL is an index into that list, never a path), and
loads checkpoints with ``weights_only=True``.

Endpoints (``RUN`` is the run's index, 0-based, in the order given):

    GET /                                 the page (static/explore.html, .js, .css: no build step, no CDN)
    GET /static/NAME                      the page's script and style sheet
    GET /api/runs                         [{id, name, model, z_dim, nu, step, checkpoint, config, dims,
                                            images, metrics, curves}] where dims[k] = {index, mean, std,
                                            low, high, kl, variance, active} (low/high = mean -+ 3 std of
                                            the held-out posterior means; kl = the average KL of that
                                            dimension's posterior marginal to N(0, 1); active: kl > 0.05)
                                            and order = the dimensions by kl, largest first;
                                            metrics = the evaluation of the checkpoint's step
                                            (metrics.jsonl, else eval.json; null without one)
    GET /api/runs/RUN/decode?z=v0,v1,...  PNG: the decoded image of z (z_dim finite values within
                                            +-1000); 400 with {"error": ...} otherwise
    GET /api/runs/RUN/traversal?z=...&dim=K&steps=N
                                          PNG: a row of N (2..32, default 9) decodes of z with dimension
                                            K swept from its low to its high
    GET /api/runs/RUN/images/I.png        the held-out image I (0 <= I < images)
    GET /api/runs/RUN/encode/I            {"mu": [...], "cov": d x d, "corr": d x d, "nu": float|null}:
                                            held-out image I's posterior (CHyVAE: L L^T; the others:
                                            their diagonal covariance)
    GET /api/runs/RUN/reconstruction/I.png
                                          PNG: held-out image I's reconstruction (decoded posterior mean)

Every error is JSON ``{"error": message}`` with status 400 (bad values) or 404 (no such run/image).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import pickle
import sys
import time
from pathlib import Path

import torch

from ._checks import ArgumentParser
from .runfiles import EVAL, has_config, read_config, read_metrics, read_status

STATIC = Path(__file__).resolve().parent / "static"
N_IMAGES = 12  # the strip of held-out images to click
STD_RANGE = 3.0  # sliders span mean -+ 3 std of the held-out posterior means
ACTIVE_KL = 0.05  # nats: a dimension whose average KL is above this is marked active
MAX_ABS_Z = 1000.0
CURVE_KEYS = ("loss", "recon", "neg_elbo", "kl", "regularizer", "tc")


class BadRequest(ValueError):
    """A request the server refuses with 400 and this message."""


class NotFound(LookupError):
    """A run or image that does not exist: 404 with this message."""


def evaluation_at(run_dir: Path, rows: list[dict], step: int) -> dict | None:
    """The evaluation of the checkpoint the page shows: the newest "eval" row of ``step`` in
    metrics.jsonl, else eval.json's (``python -m chyvae_ext.evaluate``) where it scored that step, as a
    row; None where the run has no evaluation of that step."""
    row = next((r for r in reversed(rows) if r.get("kind") == "eval" and r.get("step") == step), None)
    if row is not None:
        return row
    try:
        record = json.loads((run_dir / EVAL).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("step") != step:
        return None
    return {"kind": "eval", "step": step, **record.get("held_out", {}), **record.get("metrics", {})}


class ExploredRun:
    """One run, loaded once: its model in eval mode, held-out statistics and everything the page shows."""

    def __init__(self, run_dir: str | Path, *, checkpoint: str | Path | None = None, device: str = "cpu"):
        from .build import fixed_batches, open_dataset
        from .evaluate import load_run

        self.root = Path(run_dir)
        try:
            self.model, self.config, self.checkpoint, self.step = load_run(
                self.root, checkpoint=checkpoint, device=device
            )
        except (ValueError, OSError, RuntimeError, KeyError, pickle.UnpicklingError) as exc:
            raise ValueError(f"RUN_DIR {self.root}: cannot be explored: {exc}") from exc
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            raise ValueError(f"RUN_DIR {self.root}: cannot be explored: its checkpoint {self.checkpoint} of step "
                             f"{self.step} holds non-finite weights (the run diverged before it was written)")
        self.device = torch.device(device)
        self.dtype = next(self.model.parameters()).dtype  # what the model's layers take
        c = self.config.resolved()
        dataset = open_dataset(c, fixed=False)
        _, held_out = fixed_batches(dataset, self.device)
        self.images = held_out[:N_IMAGES].float()
        with torch.no_grad():
            mu, second = self.model.posterior(held_out.to(self.dtype))
        mu = mu.float()
        self.var_diag = self._posterior_variances(second).float()  # (n, d) per-image posterior variances
        self.mean, self.std = mu.mean(0), mu.std(0)
        self.low, self.high = self.mean - STD_RANGE * self.std, self.mean + STD_RANGE * self.std
        self.kl = (0.5 * (mu**2 + self.var_diag - self.var_diag.log() - 1)).mean(0)
        self.z_dim = mu.shape[1]
        rows = read_metrics(self.root)
        self.metrics = evaluation_at(self.root, rows, self.step)
        train_rows = [r for r in rows if r.get("kind") == "train"]
        self.curves = {"step": [r["step"] for r in train_rows]}
        for key in CURVE_KEYS:
            if train_rows and key in train_rows[0]:
                self.curves[key] = [r.get(key) for r in train_rows]

    def _posterior_variances(self, second: torch.Tensor) -> torch.Tensor:
        if self.config.model == "chyvae":  # L: the covariance's diagonal is the rows' squared norms
            return (second.float() ** 2).sum(-1)
        return second.float().exp()  # log sigma^2

    @property
    def nu(self) -> float | None:
        if self.config.model != "chyvae":
            return None
        return float(torch.as_tensor(self.model.nu).reshape(-1)[0])

    def summary(self, index: int) -> dict:
        kl = self.kl.tolist()
        dims = [
            {
                "index": k,
                "mean": float(self.mean[k]),
                "std": float(self.std[k]),
                "low": float(self.low[k]),
                "high": float(self.high[k]),
                "kl": kl[k],
                "variance": float(self.std[k]) ** 2,  # of the posterior means across the held-out images
                "active": kl[k] > ACTIVE_KL,
            }
            for k in range(self.z_dim)
        ]
        return _finite({
            "id": index,
            "name": self.root.name,
            "available": True,
            "status": run_status(self.root),
            "model": self.config.model,
            "z_dim": self.z_dim,
            "nu": self.nu,
            "step": self.step,
            "checkpoint": self.checkpoint.name,
            "config": read_config(self.root),
            "dims": dims,
            "order": sorted(range(self.z_dim), key=lambda k: -kl[k]),
            "images": len(self.images),
            "metrics": self.metrics,
            "curves": self.curves,
        })

    # ---- what the endpoints compute ------------------------------------------------------------------------------
    def parse_z(self, text: str | None) -> torch.Tensor:
        """A latent vector from "v0,v1,...": z_dim finite numbers within +-MAX_ABS_Z; BadRequest otherwise."""
        if not text:
            raise BadRequest(f"z is required: {self.z_dim} comma-separated numbers")
        parts = text.split(",")
        if len(parts) != self.z_dim:
            raise BadRequest(f"z must have {self.z_dim} values (the run's z_dim), got {len(parts)}")
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise BadRequest(f"z must be numbers, got {text[:200]!r}") from None
        bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
        if bad:
            raise BadRequest(f"z must be finite, got {values[bad[0]]} at index {bad[0]}")
        far = [i for i, v in enumerate(values) if abs(v) > MAX_ABS_Z]
        if far:
            raise BadRequest(f"z must lie within -{MAX_ABS_Z:g}..{MAX_ABS_Z:g}, got {values[far[0]]} at index {far[0]}")
        return torch.tensor(values, dtype=torch.float32, device=self.device)

    def image_index(self, text: str) -> int:
        try:
            i = int(text)
        except ValueError:
            raise BadRequest(f"image index must be an integer, got {text!r}") from None
        if not 0 <= i < len(self.images):
            raise NotFound(f"no image {i}: this run shows images 0..{len(self.images) - 1}")
        return i

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(n, d) codes to (n, C, H, W) images in [0, 1]."""
        with torch.no_grad():
            return self.model.decode(z)

    def traversal(self, z: torch.Tensor, dim: int, steps: int) -> torch.Tensor:
        t = torch.linspace(0.0, 1.0, steps, device=self.device)
        zs = z.repeat(steps, 1)
        zs[:, dim] = self.low[dim] + (self.high[dim] - self.low[dim]) * t
        return self.decode(zs)

    def encode(self, i: int) -> dict:
        x = self.images[i : i + 1].to(self.dtype)
        with torch.no_grad():
            mu, second = self.model.posterior(x)
        mu, second = mu[0].float(), second[0].float()
        cov = second @ second.T if self.config.model == "chyvae" else torch.diag(second.exp())
        s = cov.diagonal().sqrt()
        corr = cov / (s[:, None] * s[None, :])
        return {"mu": mu.tolist(), "cov": cov.tolist(), "corr": corr.tolist(), "nu": self.nu}

    def reconstruction(self, i: int) -> torch.Tensor:
        with torch.no_grad():
            mu = self.model.encode(self.images[i : i + 1].to(self.dtype))
        return self.decode(mu.float())


def run_status(run_dir: Path) -> dict:
    """The run's state as status.json says (state, step and, for a failed run, the error naming its last
    finite checkpoint); {} where there is none."""
    status = read_status(run_dir)
    return {k: status[k] for k in ("state", "step", "error") if k in status}


class UnavailableRun:
    """A run directory whose model cannot be shown (no loadable or no finite checkpoint): listed with its
    status and the reason, so that the other runs are still explored."""

    def __init__(self, run_dir: str | Path, error: str):
        self.root, self.error = Path(run_dir), error

    def summary(self, index: int) -> dict:
        try:
            model = read_config(self.root).get("model")
        except ValueError:
            model = None
        return _finite({"id": index, "name": self.root.name, "available": False, "model": model,
                        "status": run_status(self.root), "error": self.error})


def _finite(value):
    """``value`` with every non-finite float (a run's NaN loss) as None: JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def png(images: torch.Tensor) -> bytes:
    """(n, C, H, W) in [0, 1] as one PNG, the images side by side."""
    from PIL import Image

    a = (images.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    a = a.permute(2, 0, 3, 1).reshape(a.shape[2], a.shape[0] * a.shape[3], a.shape[1]).numpy()  # H, n*W, C
    img = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a, mode="L" if a.shape[-1] == 1 else "RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")


def host_name(header: str) -> str:
    """A Host header's name, without its port, lower case ("[::1]:8000" -> "[::1]")."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[: header.find("]") + 1] if "]" in header else header
    return header.split(":", 1)[0]


class OnlyHosts:
    """ASGI middleware that answers 400 to a request whose Host is not one of ``hosts``: a web page the
    user visits cannot reach the API through DNS rebinding (its requests carry the attacker's name)."""

    def __init__(self, app, hosts):
        self.app, self.hosts = app, {h.lower() for h in hosts}

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            headers = dict(scope.get("headers") or [])
            name = host_name(headers.get(b"host", b"").decode("latin-1"))
            if name not in self.hosts:
                from starlette.responses import JSONResponse

                allowed = ", ".join(sorted(self.hosts))
                response = JSONResponse({"error": f"Host {name!r} is not this explorer's (it answers {allowed}; "
                                                  "--allow-host NAME adds one)"}, status_code=400)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def allowed_hosts(host: str, extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The Host names the explorer answers: the loopback names, the address it binds (unless that is
    a wildcard, 0.0.0.0 or ::) and the ``--allow-host`` names."""
    names = list(LOOPBACK_HOSTS)
    if host not in ("0.0.0.0", "::", ""):
        names.append(f"[{host}]" if ":" in host else host)
    return names + [host_name(h) for h in extra]


def create_app(runs: list[ExploredRun], *, hosts: list[str] | tuple[str, ...] = LOOPBACK_HOSTS):
    """The Starlette app serving ``runs`` (see the module docstring for its endpoints), answering only
    requests whose Host is one of ``hosts`` (:func:`allowed_hosts`; default the loopback names)."""
    try:
        from starlette.applications import Starlette
        from starlette.concurrency import run_in_threadpool
        from starlette.responses import FileResponse, JSONResponse, Response
        from starlette.routing import Route
    except ImportError as exc:
        raise ImportError("the explorer needs Starlette: pip install 'chyvae_ext[explore]'") from exc

    def run_of(request) -> ExploredRun:
        text = request.path_params["run"]
        try:
            index = int(text)
        except ValueError:
            raise BadRequest(f"run id must be an integer index, got {text!r}") from None
        if not 0 <= index < len(runs):
            raise NotFound(f"no run {index}: this server shows runs 0..{len(runs) - 1}")
        if isinstance(runs[index], UnavailableRun):
            raise NotFound(f"run {index} ({runs[index].root.name}) cannot be shown: {runs[index].error}")
        return runs[index]

    def handler(fn, *, worker: bool = True):
        """An endpoint calling ``fn(request)``: in a worker thread where it runs the model (``worker``), so
        that a slow model call never holds up the event loop and the other requests."""
        async def endpoint(request):
            try:
                return await run_in_threadpool(fn, request) if worker else fn(request)
            except BadRequest as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
            except NotFound as exc:
                return JSONResponse({"error": str(exc.args[0])}, status_code=404)

        return endpoint

    def png_response(images: torch.Tensor, started: float) -> Response:
        body = png(images)
        ms = (time.perf_counter() - started) * 1e3  # the request's work on this server: decoding and the PNG
        return Response(body, media_type="image/png",
                        headers={"Cache-Control": "no-store", "Server-Timing": f"decode;dur={ms:.1f}"})

    def page(request):
        return FileResponse(STATIC / "explore.html", media_type="text/html")

    def static(request):
        name = request.path_params["name"]
        if name not in ("explore.js", "explore.css"):
            raise NotFound(f"no static file {name!r}")
        return FileResponse(STATIC / name, media_type="text/javascript" if name.endswith(".js") else "text/css")

    def list_runs(request):
        return JSONResponse([run.summary(i) for i, run in enumerate(runs)])

    def decode(request):
        run = run_of(request)
        t0 = time.perf_counter()
        z = run.parse_z(request.query_params.get("z"))
        return png_response(run.decode(z[None]), t0)

    def traversal(request):
        run = run_of(request)
        t0 = time.perf_counter()
        z = run.parse_z(request.query_params.get("z"))
        dim = _int_param(request, "dim", None, 0, run.z_dim - 1)
        steps = _int_param(request, "steps", 9, 2, 32)
        return png_response(run.traversal(z, dim, steps), t0)

    def image(request):
        run = run_of(request)
        i = run.image_index(request.path_params["image"])
        return png_response(run.images[i : i + 1], time.perf_counter())

    def encode(request):
        run = run_of(request)
        return JSONResponse(run.encode(run.image_index(request.path_params["image"])))

    def reconstruction(request):
        run = run_of(request)
        t0 = time.perf_counter()
        return png_response(run.reconstruction(run.image_index(request.path_params["image"])), t0)

    async def not_found(request, exc):
        return JSONResponse({"error": f"no such page: {request.url.path}"}, status_code=404)

    routes = [
        Route("/", handler(page, worker=False)),
        Route("/static/{name}", handler(static, worker=False)),
        Route("/api/runs", handler(list_runs, worker=False)),  # no model call: the statistics are from start-up
        Route("/api/runs/{run}/decode", handler(decode)),
        Route("/api/runs/{run}/traversal", handler(traversal)),
        Route("/api/runs/{run}/images/{image}.png", handler(image)),
        Route("/api/runs/{run}/encode/{image}", handler(encode)),
        Route("/api/runs/{run}/reconstruction/{image}.png", handler(reconstruction)),
    ]
    return OnlyHosts(Starlette(routes=routes, exception_handlers={404: not_found}), hosts)


def _int_param(request, name: str, default: int | None, least: int, most: int) -> int:
    text = request.query_params.get(name)
    if text is None:
        if default is None:
            raise BadRequest(f"{name} is required: an integer {least}..{most}")
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadRequest(f"{name} must be an integer {least}..{most}, got {text!r}") from None
    if not least <= value <= most:
        raise BadRequest(f"{name} must be an integer {least}..{most}, got {value}")
    return value


class Served:
    """The app served by uvicorn in a background thread (tests, screenshots): ``url``; ``stop()`` ends it."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0):
        import socket
        import threading

        import uvicorn

        if port == 0:
            with socket.socket() as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + timeout
        while not self.server.started and time.time() < deadline:
            time.sleep(0.05)
        if not self.server.started:
            raise RuntimeError(f"the explorer did not start on {host}:{port} within {timeout:g} s")
        self.url = f"http://{host}:{port}/"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def load_runs(run_dirs: list[str], *, checkpoint: str | None = None, device: str = "cpu") -> list[ExploredRun]:
    """Every run named, loaded; ValueError naming the first that cannot be (at start-up, not on a request)."""
    if not run_dirs:
        raise ValueError("name at least one RUN_DIR")
    if checkpoint is not None and len(run_dirs) > 1:
        raise ValueError(f"--checkpoint names one run's checkpoint; got {len(run_dirs)} run directories")
    runs: list[ExploredRun | UnavailableRun] = []
    for d in run_dirs:
        try:
            runs.append(ExploredRun(d, checkpoint=checkpoint, device=device))
        except ValueError as exc:
            if not has_config(d) or len(run_dirs) == 1:
                raise
            runs.append(UnavailableRun(d, str(exc)))  # a failed run among others: listed, with why
    if all(isinstance(r, UnavailableRun) for r in runs):
        raise ValueError(f"none of the runs can be explored; {runs[0].error}")
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="python -m chyvae_ext.explore", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--host", default="127.0.0.1",
                        help="the address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--allow-host", dest="allow_hosts", action="append", default=[], metavar="NAME",
                        help="also answer requests for this Host name (besides localhost, 127.0.0.1, [::1] and "
                        "--host); repeatable")
    parser.add_argument("--checkpoint", help="this checkpoint instead of the run's last (one run only)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        print(f"error: --port must be 0..65535, got {args.port}", file=sys.stderr)
        return 2
    try:
        runs = load_runs(args.runs, checkpoint=args.checkpoint, device=args.device)
        app = create_app(runs, hosts=allowed_hosts(args.host, args.allow_hosts))
        import uvicorn
    except (ValueError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        sock = listening_socket(args.host, args.port)
    except OSError as exc:
        print(f"error: --host {args.host} --port {args.port}: cannot listen there ({exc.strerror or exc})",
              file=sys.stderr)
        return 2
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    unavailable = [r.root.name for r in runs if isinstance(r, UnavailableRun)]
    note = f" ({len(unavailable)} cannot be shown: {', '.join(unavailable)})" if unavailable else ""
    print(f"chyvae_ext explorer: {len(runs)} run(s){note}; open http://{shown}:{port}/", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
    return 0


def listening_socket(host: str, port: int):
    """A TCP socket bound to (host, port) and listening (port 0: a free one), so that the address printed
    is one that answers; OSError where it cannot be bound (the port taken, the address not this machine's)."""
    import socket

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


if __name__ == "__main__":
    raise SystemExit(main())

