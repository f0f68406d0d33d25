"""``stream-unlearn demo``: the paper's Gaussian mixture, forgotten exactly."""

from __future__ import annotations

import argparse
import time

import numpy as np

from . import DCKMeans, QKMeans


def gaussian_mixture(n: int, d: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The paper's synthetic set: k spherical Gaussians with well-separated means."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 5.0, size=(k, d))
    labels = rng.integers(0, k, size=n)
    return centres[labels] + rng.normal(size=(n, d)), labels


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the demo subcommand."""
    parser.add_argument("--n", type=int, default=100_000, help="points (default %(default)s)")
    parser.add_argument("--deletes", type=int, default=1000, help="deletions (default %(default)s)")


def main_demo(args: argparse.Namespace) -> int:
    """Fit, delete, verify; print what it cost."""
    X, _ = gaussian_mixture(args.n, 25, 5, seed=0)
    ids = [f"user-{i}" for i in range(args.n)]
    rng = np.random.default_rng(1)
    for model in (DCKMeans(k=5, seed=0), QKMeans(k=5, seed=0)):
        start = time.perf_counter()
        model.insert(ids, X)
        model.flush()
        fit = time.perf_counter() - start
        start = time.perf_counter()
        for i in rng.choice(args.n, args.deletes, replace=False):
            model.delete([ids[i]])
            model.flush()
        per_delete = (time.perf_counter() - start) / args.deletes
        print(f"{type(model).__name__}: fit {fit:.2f}s, {args.deletes} deletes at {per_delete * 1e3:.3f} ms each, "
              f"loss {model.loss():.3f}, verify {'OK' if model.verify() else 'FAILED'}")
    return 0
