"""Closed-form ridge regression with grouped, nested cross-validation (numpy, float64).

Probes must be scored on windows whose whole trajectory (or file) the probe never saw: windows of one
trajectory are near-copies of each other, so a window-level split would score memory, not a concept.
The regularisation strength is chosen inside each outer training fold by an inner grouped CV over a
scale-free grid (alpha relative to the largest squared singular value of the standardised features), so
the held-out folds never inform the choice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ALPHA_GRID = np.logspace(-6, 1, 15)  # × s_max² of the standardised training features


@dataclass
class RidgeModel:
    """y ≈ ((x - mean) / std) @ w + b."""

    mean: np.ndarray  # [D]
    std: np.ndarray  # [D]
    w: np.ndarray  # [D]
    b: float
    alpha: float

    def predict(self, X: np.ndarray) -> np.ndarray:
        return ((np.asarray(X, np.float64) - self.mean) / self.std) @ self.w + self.b


def _standardise(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mean, std = X.mean(0), X.std(0)
    std = np.where(std > 1e-12, std, 1.0)  # constant features (e.g. codes never used) stay 0
    return (X - mean) / std, mean, std


def ridge_path(X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, rel_alphas: np.ndarray) -> np.ndarray:
    """Test predictions [n_alphas, n_test] for every alpha in one SVD of the standardised training features."""
    Xs, mean, std = _standardise(np.asarray(X_train, np.float64))
    y_mean = y_train.mean()
    U, S, Vt = np.linalg.svd(Xs, full_matrices=False)
    alphas = rel_alphas * (S[0] ** 2 if len(S) and S[0] > 0 else 1.0)
    shrink = S[None, :] / (S[None, :] ** 2 + alphas[:, None])  # [A, r]
    coef = (shrink * (U.T @ (y_train - y_mean))[None, :]) @ Vt  # [A, D]
    return coef @ ((np.asarray(X_test, np.float64) - mean) / std).T + y_mean  # [A, n_test]


def fit_ridge(X: np.ndarray, y: np.ndarray, rel_alpha: float) -> RidgeModel:
    X = np.asarray(X, np.float64)
    Xs, mean, std = _standardise(X)
    U, S, Vt = np.linalg.svd(Xs, full_matrices=False)
    alpha = rel_alpha * (S[0] ** 2 if len(S) and S[0] > 0 else 1.0)
    y_mean = float(np.mean(y))
    w = Vt.T @ (S / (S**2 + alpha) * (U.T @ (y - y_mean)))
    return RidgeModel(mean, std, w, y_mean, float(rel_alpha))


def group_folds(groups: list, n_folds: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) index pairs; every group's samples fall in exactly one test fold."""
    unique = sorted(set(groups), key=str)
    if len(unique) < 2:
        raise ValueError(f"grouped cross-validation needs at least 2 groups (trajectories/files), got {len(unique)}")
    order = np.random.default_rng(seed).permutation(len(unique))
    n_folds = min(n_folds, len(unique))
    fold_of = {unique[g]: i % n_folds for i, g in enumerate(order)}
    fold = np.array([fold_of[g] for g in groups])
    return [(np.flatnonzero(fold != k), np.flatnonzero(fold == k)) for k in range(n_folds)]


def r2_score(y: np.ndarray, pred: np.ndarray) -> float:
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(((y - pred) ** 2).sum()) / ss_tot if ss_tot > 0 else float("nan")


def _choose_alpha(X: np.ndarray, y: np.ndarray, groups: list, n_folds: int, seed: int,
                  classify: bool) -> float:
    """Relative alpha with the best inner grouped-CV score (MSE, or accuracy of the sign when classifying)."""
    scores = np.zeros(len(ALPHA_GRID))
    for train, test in group_folds(groups, n_folds, seed + 1):
        pred = ridge_path(X[train], y[train], X[test], ALPHA_GRID)  # [A, n_test]
        scores += ((np.sign(pred) != np.sign(y[test])).mean(1) if classify
                   else ((pred - y[test]) ** 2).mean(1)) * len(test)
    return float(ALPHA_GRID[int(np.argmin(scores))])  # ties → the smallest alpha that reaches it


def cross_validate(X: np.ndarray, y: np.ndarray, groups: list, *, n_folds: int = 5, seed: int = 0,
                   classify: bool = False) -> dict:
    """Nested grouped CV → {"pred": out-of-fold predictions [N], "score": R² (or accuracy), "alphas": per fold}.

    With ``classify`` y holds ±1 labels, the prediction is the sign of a ridge regression on them (a ridge
    classifier), and the score is the accuracy."""
    X, y = np.asarray(X, np.float64).reshape(len(y), -1), np.asarray(y, np.float64)
    pred, alphas = np.zeros_like(y), []
    for train, test in group_folds(groups, n_folds, seed):
        train_groups = [groups[i] for i in train]
        inner = min(n_folds, len(set(train_groups)))
        alpha = _choose_alpha(X[train], y[train], train_groups, inner, seed, classify) if inner >= 2 else 1e-3
        alphas.append(alpha)
        pred[test] = fit_ridge(X[train], y[train], alpha).predict(X[test])
    if classify:
        return {"pred": np.sign(pred), "score": float((np.sign(pred) == np.sign(y)).mean()), "alphas": alphas}
    return {"pred": pred, "score": r2_score(y, pred), "alphas": alphas}


def fit_final(X: np.ndarray, y: np.ndarray, groups: list, *, n_folds: int = 5, seed: int = 0) -> RidgeModel:
    """The probe to keep: alpha by grouped CV on all the data, then one fit on all of it."""
    X, y = np.asarray(X, np.float64).reshape(len(y), -1), np.asarray(y, np.float64)
    return fit_ridge(X, y, _choose_alpha(X, y, groups, min(n_folds, len(set(groups))), seed, classify=False))
