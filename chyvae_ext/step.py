"""One optimisation step as a callable, eager or compiled (:func:`make_step`), from small builders:
the batch reader, the loss under autocast, the eager update, the whole-graph step (forward,
backward and Adam in one compiled graph) and the loss-graph step (the loss compiled, the optimisers
eager; FactorVAE's discriminator after the VAE). Adam's update is written out here
(:func:`adam_update`) so that it can enter the same graph.
"""

from __future__ import annotations

import torch

from .distributed import Distributed


def adam_options(compile: bool, device: torch.device) -> dict:
    """Adam's options for a step: compiled on a GPU, the fused kernel with its step counts on the
    device (one launch an update where Adam runs eagerly, and nothing on the host for CUDA graphs)."""
    return {"fused": True} if compile and torch.device(device).type == "cuda" else {}


def whole_step_compiles() -> bool:
    """Whether this torch can compile forward, backward and optimiser update as one graph
    (its dynamo config has ``trace_autograd_ops``)."""
    return hasattr(torch._dynamo.config, "trace_autograd_ops")


def adam_update(params: list[torch.Tensor], grads, opt: torch.optim.Adam) -> None:
    """torch.optim.Adam's update (no weight decay, amsgrad or maximize) on opt's own state, written
    out so that it compiles into the same graph as the forward and backward (Adam.step always
    breaks a compiled graph). The state must exist (one eager opt.step() creates it)."""
    group = opt.param_groups[0]
    if group["weight_decay"] or group["amsgrad"] or group["maximize"]:
        raise ValueError("adam_update: only plain Adam (no weight decay, amsgrad or maximize) is written out here")
    beta1, beta2 = group["betas"]
    lr, eps = group["lr"], group["eps"]
    with torch.no_grad():
        for p, g in zip(params, grads, strict=True):
            state = opt.state[p]
            state["step"] += 1
            step = state["step"].to(torch.float64)  # 1 - beta2^t loses digits in float32
            state["exp_avg"].lerp_(g, 1 - beta1)
            state["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
            bias2_sqrt = (1 - beta2**step).sqrt().to(p.dtype)
            step_size = (lr / (1 - beta1**step)).to(p.dtype)
            denom = (state["exp_avg_sq"].sqrt() / bias2_sqrt).add_(eps)
            p.sub_(step_size * state["exp_avg"] / denom)


def make_step(model, opt, opt_d, batches, noise_gen, *, bf16: bool, compile: str | None = None,
              dist: Distributed | None = None):
    """One optimisation step (two for FactorVAE: the VAE, then its discriminator) as a closure.

    Returns the step's loss terms as tensors; nothing here waits for the device. For an ensemble
    (a model built with members=M), ``batches`` yields (M, N, C, H, W), ``noise_gen`` is a list of
    M generators (read at every step: the trainer shortens it in place when a member leaves), and
    the terms are (M,).

    compile: None (eager) or a torch.compile backend ("inductor"; "aot_eager" checks graph capture
    without generating code). Compiled, the noise is drawn outside the graph (model.sample_noise,
    same draws in the same order); for CHyVAE and beta-VAE the forward, backward and Adam update
    are one graph (fullgraph=True) where this torch can trace autograd (whole_step_compiles()),
    after one eager step that creates the optimiser's state; otherwise, and for FactorVAE, the
    loss is compiled (fullgraph=True, its backward through AOTAutograd) and the optimiser runs
    eagerly. On CUDA with inductor the graphs run as CUDA graphs (mode="reduce-overhead"). The
    dynamo setting the whole graph needs is set only while it runs: nothing process-wide is left
    changed.

    dist: under torchrun, the loss (and FactorVAE's discriminator loss) run through
    DistributedDataParallel (chyvae_ext.distributed), which averages the gradients across processes.
    """
    device = next(model.parameters()).device
    options = {"mode": "reduce-overhead"} if compile == "inductor" and device.type == "cuda" else {}
    dist = dist or Distributed()
    next_batch = _batch_reader(batches, channels_last=bf16 and compile is None)
    loss = _loss_fn(dist.wrap_loss(model), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16))

    def noise_for(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return model.sample_noise(x.shape[-4], device, noise_gen)

    if compile is not None and opt_d is None and whole_step_compiles():
        whole = torch.compile(_whole_graph(loss, opt), fullgraph=True, backend=compile, **options)
        return _whole_graph_step(whole, loss, opt, next_batch, noise_for, cudagraphs=bool(options))
    if compile is not None:
        loss = torch.compile(loss, fullgraph=True, backend=compile, **options)
    disc_update = None
    if opt_d is not None:
        disc_update = _discriminator_update(dist.wrap_discriminator_loss(model), opt_d, noise_gen)
    return _loss_graph_step(loss, opt, next_batch, noise_for, disc_update, cudagraphs=bool(options))


def _batch_reader(batches, *, channels_last: bool):
    """The next batch; in channels_last where that helps (eager bf16 convolutions).

    Compiled, Inductor chooses the layouts itself (a forced channels_last has been mis-strided there:
    benchmarks/RESULTS.md). An ensemble's (M, N, C, H, W) batches are laid out by its convolutions."""

    def next_batch() -> torch.Tensor:
        x = next(batches)
        return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x

    return next_batch


def _loss_fn(model_loss, autocast):
    """The model's loss terms of a batch and its noise, under autocast."""

    def loss(x, noise):
        with autocast:
            return model_loss(x, noise)

    return loss


def _eager_update(opt, out: dict) -> None:
    opt.zero_grad(set_to_none=True)
    out["loss"].sum().backward()  # an ensemble's members' losses: each member's gradient is its own
    opt.step()


def _whole_graph(loss, opt):
    """Forward, backward and Adam's update as one function, for torch.compile."""
    params = [p for group in opt.param_groups for p in group["params"]]

    def whole(x, noise):
        out = loss(x, noise)
        adam_update(params, torch.autograd.grad(out["loss"].sum(), params), opt)
        return {k: v.detach() for k, v in out.items()}

    return whole


def _whole_graph_step(whole, loss, opt, next_batch, noise_for, *, cudagraphs: bool):
    """The step as one compiled graph, after a first eager step that creates Adam's state."""

    def whole_graph_step() -> dict:
        x = next_batch()
        noise = noise_for(x)
        if not opt.state:  # the first step eagerly: it creates Adam's state
            out = loss(x, noise)
            _eager_update(opt, out)
            if cudagraphs:  # the state is updated in place: CUDA graphs may keep its addresses
                for state in opt.state.values():
                    for t in state.values():
                        if torch.is_tensor(t):
                            torch._dynamo.mark_static_address(t)
            return out
        if cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        with torch._dynamo.config.patch(trace_autograd_ops=True):  # autograd.grad inside the graph
            return whole(x, noise)

    return whole_graph_step


def _discriminator_update(disc_terms, opt_d, noise_gen):
    """FactorVAE's discriminator step (Kim & Mnih 2018, Algorithm 2): D tells the first batch's codes
    (label 0) from a second, independent batch's codes permuted dimension by dimension (label 1); the
    codes are detached; its own optimiser. Adds its loss and accuracy to the step's terms."""

    def discriminator_update(out: dict, loss, next_batch, noise_for) -> None:
        x2 = next_batch()
        noise2 = noise_for(x2)
        with torch.no_grad():
            z2 = loss(x2, noise2)["z"]
        d_loss, d_accuracy = disc_terms(out["z"].float(), z2.float(), noise_gen)
        opt_d.zero_grad(set_to_none=True)  # the VAE's backward left gamma * TC's gradients on D: not D's to take
        d_loss.sum().backward()
        opt_d.step()
        out["disc_loss"] = d_loss
        out["disc_accuracy"] = d_accuracy

    return discriminator_update


def _loss_graph_step(loss, opt, next_batch, noise_for, disc_update, *, cudagraphs: bool):
    """The step with the loss eager or compiled and the optimisers eager."""

    def loss_graph_step() -> dict:
        x = next_batch()
        noise = noise_for(x)
        if cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        out = loss(x, noise)
        _eager_update(opt, out)
        if disc_update is not None:
            disc_update(out, loss, next_batch, noise_for)
        return out

    return loss_graph_step
