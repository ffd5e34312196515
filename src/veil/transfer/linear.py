"""The linear probe: L2-regularised logistic regression on frozen, cached features.

The protocol of Kornblith et al., "Do Better ImageNet Models Transfer Better?" (CVPR
2019), which transfer studies since follow: standardised features, a full-batch L-BFGS
fit of multinomial logistic regression, the L2 strength picked on held-out training
images (the task's own val split where it has one, else a stratified 10% of train),
then a refit on train + val with that strength.

The loss is written in torch (SciPy's L-BFGS-B drives the search, as in sklearn's
``lbfgs`` solver) rather than calling sklearn's ``LogisticRegression``, because one code
path then serves both kinds of task: softmax over classes (CIFAR-10, scenes) and CelebA's
40 independent sigmoids, which sklearn would fit as 40 separate problems over 162,770
images; and the loss and gradient run on the GPU the features are already on. It is
deterministic: the same features and seed give the same weights bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from veil.transfer.tasks.base import MULTICLASS

DEFAULT_L2_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


@dataclass(frozen=True)
class LinearOptions:
    l2_grid: tuple[float, ...] = DEFAULT_L2_GRID
    max_iter: int = 300  # L-BFGS iterations per fit
    holdout: float = 0.1  # share of train held out to pick L2 when the task has no val

    def describe(self) -> dict[str, Any]:
        return {"l2_grid": list(self.l2_grid), "max_iter": self.max_iter,
                "holdout": self.holdout,
                "solver": "L-BFGS-B (scipy), full batch, loss and gradient in torch",
                "features": "standardised with the fit set's mean and std"}


@dataclass
class ProbeResult:
    test_scores: np.ndarray  # probabilities: softmax (multiclass) or sigmoid (multilabel)
    l2: float
    selection: dict[str, float] = field(default_factory=dict)  # l2 -> val metric


def holdout_split(labels: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (per class, multiclass) random indices: (fit, held out)."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    if labels.ndim == 1:
        held: list[int] = []
        for cls in np.unique(labels):
            members = np.flatnonzero(labels == cls)
            take = max(1, round(len(members) * share)) if share > 0 else 0
            if 0 < take < len(members):
                held += rng.choice(members, take, replace=False).tolist()
        out = np.zeros(n, bool)
        out[held] = True
    else:
        out = np.zeros(n, bool)
        take = round(n * share)
        out[rng.permutation(n)[:take]] = True
    return np.flatnonzero(~out), np.flatnonzero(out)


def _loss(logits: torch.Tensor, targets: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == MULTICLASS:
        return F.cross_entropy(logits, targets)
    # the sum over attributes of each attribute's mean loss: the attributes are then
    # independent problems sharing one L2 strength
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / len(targets)


def fit(x: torch.Tensor, y: torch.Tensor, kind: str, outputs: int, l2: float, max_iter: int,
        init: tuple[torch.Tensor, torch.Tensor] | None = None
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and bias minimising the mean loss + l2/2 * ||W||^2 (bias unpenalised).

    SciPy's L-BFGS-B drives the search (as sklearn's ``lbfgs`` solver does) and torch
    computes the loss and its gradient where the features are (CPU or GPU): the solver's
    many small vector operations stay in compiled single-threaded code, which on a busy
    CPU is an order of magnitude faster than running them as torch operations.
    """
    from scipy.optimize import minimize
    from threadpoolctl import threadpool_limits

    dim = x.shape[1]
    size = outputs * dim

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        t = torch.from_numpy(theta).to(device=x.device, dtype=x.dtype).requires_grad_(True)
        weight, bias = t[:size].view(outputs, dim), t[size:]
        loss = _loss(x @ weight.T + bias, y, kind) + 0.5 * l2 * weight.square().sum()
        (grad,) = torch.autograd.grad(loss, t)
        return float(loss.detach()), grad.detach().double().cpu().numpy()

    start = (np.zeros(size + outputs) if init is None
             else torch.cat([init[0].reshape(-1), init[1]]).double().cpu().numpy())
    # The solver's BLAS calls are on vectors: threads only make them wait on each other.
    with threadpool_limits(limits=1, user_api="blas"):
        found = minimize(objective, start, jac=True, method="L-BFGS-B",
                         options={"maxiter": max_iter, "maxcor": 20, "gtol": 1e-6,
                                  "ftol": 64 * np.finfo(float).eps})
    theta = torch.from_numpy(found.x).to(device=x.device, dtype=x.dtype)
    return theta[:size].view(outputs, dim), theta[size:]


def _scores(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, kind: str) -> np.ndarray:
    logits = x @ weight.T + bias
    probs = torch.softmax(logits, 1) if kind == MULTICLASS else torch.sigmoid(logits)
    return probs.float().cpu().numpy()


def _metric(scores: np.ndarray, labels: np.ndarray, kind: str) -> float:
    if kind == MULTICLASS:
        return float(np.mean(scores.argmax(1) == labels))
    return float(np.mean((scores >= 0.5) == labels.astype(bool)))


def _standardise(fit_x: np.ndarray, *others: np.ndarray, device: torch.device
                 ) -> list[torch.Tensor]:
    """Standardised copies, float64 on the CPU (exact line searches), float32 on a GPU."""
    mean = fit_x.mean(axis=0, dtype=np.float64)
    std = fit_x.std(axis=0, dtype=np.float64)
    std = np.where(std > 0, std, 1.0)  # as sklearn: only constant features stay as they are
    dtype = np.float64 if device.type == "cpu" else np.float32
    return [torch.from_numpy(((a - mean) / std).astype(dtype)).to(device)
            for a in (fit_x, *others)]


def _targets(labels: np.ndarray, kind: str, device: torch.device) -> torch.Tensor:
    if kind == MULTICLASS:
        return torch.from_numpy(labels.astype(np.int64)).to(device)
    dtype = np.float64 if device.type == "cpu" else np.float32
    return torch.from_numpy(labels.astype(dtype)).to(device)


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, *, kind: str,
                 outputs: int, val: tuple[np.ndarray, np.ndarray] | None = None,
                 options: LinearOptions | None = None, seed: int = 0,
                 device: torch.device | None = None) -> ProbeResult:
    """Pick the L2 strength on ``val`` (or on a held-out share of train), refit on all
    labelled images with it, and score the test images."""
    options = options or LinearOptions()
    device = device or torch.device("cpu")
    if val is None:
        fit_idx, held_idx = holdout_split(train_y, options.holdout, seed)
        select = (train_x[fit_idx], train_y[fit_idx], train_x[held_idx], train_y[held_idx])
        all_x, all_y = train_x, train_y
    else:
        select = (train_x, train_y, val[0], val[1])
        all_x, all_y = np.concatenate([train_x, val[0]]), np.concatenate([train_y, val[1]])
    grid = sorted(options.l2_grid, reverse=True)  # strong to weak: each warm-starts the next
    selection: dict[str, float] = {}
    best_l2 = grid[0]
    if len(grid) > 1 and len(select[2]):
        fx, vx = _standardise(select[0], select[2], device=device)
        fy = _targets(select[1], kind, device)
        best = -math.inf
        init = None
        for l2 in grid:
            init = fit(fx, fy, kind, outputs, l2, options.max_iter, init)
            metric = _metric(_scores(vx, *init, kind), select[3], kind)
            selection[f"{l2:g}"] = metric
            if metric > best:  # ties keep the stronger regularisation
                best, best_l2 = metric, l2
    ax, tx = _standardise(all_x, test_x, device=device)
    weight, bias = fit(ax, _targets(all_y, kind, device), kind, outputs, best_l2,
                       options.max_iter)
    return ProbeResult(_scores(tx, weight, bias, kind), best_l2, selection)
