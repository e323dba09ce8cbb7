"""Under pytest-xdist (``-n N``) the workers share the cores: each worker's torch, and every process its
tests start (training CLIs, torchrun, Ray), gets cores / N threads."""

import os

_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    _threads = str(max(1, (os.cpu_count() or 1) // _workers))
    os.environ["OMP_NUM_THREADS"] = _threads
    os.environ["MKL_NUM_THREADS"] = _threads
    import torch

    torch.set_num_threads(int(_threads))
