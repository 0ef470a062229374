"""Post-hoc decision and calibration rules for a classifier's outputs (a leaf: NumPy, SciPy, scikit-learn).

Everything here is fitted on a *validation* split and then applied unchanged to
test or served predictions. Inputs are plain arrays:

- ``logits``: ``[n, C]`` raw scores (anything softmax turns into probabilities),
- ``log_probs``: ``[n, C]`` log-probabilities (``log_softmax`` of logits, or ``log`` of any
  probabilities, e.g. a blend),
- ``probs``: ``[n, C]`` rows summing to 1,
- ``labels``: ``[n]`` integer class ids in ``range(C)``.

Nothing here knows about models or runs: :mod:`topoclass.app.serving` fits these rules
and applies them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_EPS = 1e-12
# SciPy and scikit-learn are imported where a rule is fitted or scored, not where one is applied:
# serving a prediction must not pay seconds of imports for them.


def softmax(scores: np.ndarray) -> np.ndarray:
    """Row-wise softmax, computed stably (shifted by the row maximum)."""
    shifted = scores - scores.max(axis=1, keepdims=True)
    exps = np.exp(shifted)
    return exps / exps.sum(axis=1, keepdims=True)


# -- temperature ------------------------------------------------------------------------------------


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities ``softmax(logits / T)``."""
    return softmax(np.asarray(logits, dtype=float) / temperature)


def fit_temperature(
    logits: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)
) -> float:
    """The temperature ``T`` minimizing the mean negative log-likelihood of ``softmax(logits / T)``.

    Searched on ``log T`` (bounded scalar minimization); the NLL is convex in ``1 / T`` so
    the minimum is unique. Argmax decisions do not change with ``T``.
    """
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    logits = np.asarray(logits, dtype=float)
    labels = np.asarray(labels, dtype=int)
    rows = np.arange(len(labels))

    def nll(log_t: float) -> float:
        return float(-log_softmax(logits / np.exp(log_t), axis=1)[rows, labels].mean())

    result = minimize_scalar(
        nll, bounds=(np.log(bounds[0]), np.log(bounds[1])), method="bounded", options={"xatol": 1e-6}
    )
    return float(np.exp(result.x))


# -- calibration error ------------------------------------------------------------------------------


def reliability_bins(
    probs: np.ndarray, labels: np.ndarray, bins: int = 15
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-label reliability diagram: per non-empty equal-width bin of the max probability,
    (accuracy, mean confidence, count).

    Accuracy and confidence come from :func:`sklearn.calibration.calibration_curve` on
    (prediction correct, max probability); counts use the same bin assignment
    (edges ``linspace(0, 1, bins + 1)``, right-closed bins as scikit-learn assigns them).
    """
    from sklearn.calibration import calibration_curve

    probs = np.asarray(probs, dtype=float)
    labels = np.asarray(labels, dtype=int)
    confidence = np.clip(probs.max(axis=1), 0.0, 1.0)
    correct = (probs.argmax(axis=1) == labels).astype(int)
    accuracy, mean_confidence = calibration_curve(
        correct, confidence, n_bins=bins, strategy="uniform", pos_label=1
    )
    edges = np.linspace(0.0, 1.0, bins + 1)
    counts = np.bincount(np.searchsorted(edges[1:-1], confidence), minlength=bins)
    counts = counts[counts > 0]
    if len(counts) != len(accuracy):  # the bin rule above must be scikit-learn's
        raise RuntimeError("bin counts do not match calibration_curve's bins")
    return accuracy, mean_confidence, counts


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Top-label ECE: sum over equal-width max-probability bins of ``n_b / n * |acc_b - conf_b|``."""
    accuracy, confidence, counts = reliability_bins(probs, labels, bins)
    return float(np.sum(counts * np.abs(accuracy - confidence)) / counts.sum())


# -- decision rules ---------------------------------------------------------------------------------


def logit_adjust(log_probs: np.ndarray, prior: np.ndarray, tau: float) -> np.ndarray:
    """Menon et al. (ICLR 2021) post-hoc logit adjustment: ``log_probs - tau * log(prior)``."""
    prior = np.asarray(prior, dtype=float)
    return np.asarray(log_probs, dtype=float) - tau * np.log(np.clip(prior, _EPS, None))


def _score(metric: str, labels: np.ndarray, predicted: np.ndarray, classes: int) -> float:
    from sklearn.metrics import f1_score

    if metric == "macro_f1":
        return float(
            f1_score(labels, predicted, labels=list(range(classes)), average="macro", zero_division=0)
        )
    if metric == "accuracy":
        return float(np.mean(labels == predicted))
    raise ValueError(f"unknown metric '{metric}' (macro_f1 or accuracy)")


def fit_class_bias(
    log_probs: np.ndarray,
    labels: np.ndarray,
    metric: str = "macro_f1",
    grid: np.ndarray | None = None,
    rounds: int = 5,
) -> np.ndarray:
    """Per-class additive offsets ``b`` so that ``argmax(log_probs + b)`` maximizes ``metric``.

    Coordinate search: class 0's offset stays 0 (only differences matter); each round tries
    every grid value for each other class in turn and keeps the best, until a round changes
    nothing. Ties go to the offset closest to 0, so a flat optimum does not wander.
    Deterministic. Macro-F1 here averages over all ``C`` classes.
    """
    log_probs = np.asarray(log_probs, dtype=float)
    labels = np.asarray(labels, dtype=int)
    classes = log_probs.shape[1]
    grid = np.linspace(-3.0, 3.0, 121) if grid is None else np.asarray(grid, dtype=float)
    grid = grid[np.argsort(np.abs(grid), kind="stable")]  # first found wins: nearest to 0
    bias = np.zeros(classes)
    best = _score(metric, labels, log_probs.argmax(axis=1), classes)
    for _ in range(rounds):
        changed = False
        for k in range(1, classes):
            trial = bias.copy()
            for value in grid:
                trial[k] = value
                score = _score(metric, labels, (log_probs + trial).argmax(axis=1), classes)
                if score > best + 1e-12:
                    best, bias[k], changed = score, value, True
        if not changed:
            break
    return bias


# -- blending ---------------------------------------------------------------------------------------


def fit_blend_weight(
    p_a: np.ndarray, p_b: np.ndarray, labels: np.ndarray, criterion: str = "log_loss"
) -> float:
    """Weight ``w`` in [0, 1] of the linear pool ``w * p_a + (1 - w) * p_b``.

    ``criterion="log_loss"`` (default) minimizes the validation log-loss (smooth, one optimum
    for a linear pool); ``"macro_f1"`` maximizes argmax macro-F1 on a 0.01 grid (ties to the
    smallest ``w``), which is noisier.
    """
    from scipy.optimize import minimize_scalar
    from sklearn.metrics import log_loss

    p_a, p_b = np.asarray(p_a, dtype=float), np.asarray(p_b, dtype=float)
    labels = np.asarray(labels, dtype=int)
    classes = list(range(p_a.shape[1]))
    if criterion == "log_loss":
        result = minimize_scalar(
            lambda w: log_loss(labels, np.clip(w * p_a + (1 - w) * p_b, _EPS, 1), labels=classes),
            bounds=(0.0, 1.0),
            method="bounded",
            options={"xatol": 1e-5},
        )
        return float(result.x)
    if criterion == "macro_f1":
        weights = np.linspace(0.0, 1.0, 101)
        scores = [
            _score("macro_f1", labels, (w * p_a + (1 - w) * p_b).argmax(axis=1), len(classes))
            for w in weights
        ]
        return float(weights[int(np.argmax(scores))])
    raise ValueError(f"unknown criterion '{criterion}' (log_loss or macro_f1)")


# -- hierarchy --------------------------------------------------------------------------------------


def coarsen(probs_fine: np.ndarray, mapping: Sequence[int]) -> np.ndarray:
    """Probabilities of coarse classes: ``out[:, j] = sum of probs_fine[:, i] for i with mapping[i] == j``.

    ``mapping[i]`` is the coarse class of fine class ``i``; e.g. Tang's
    topo_class (trivial, TI, TCI, semimetal) -> topological (trivial, topological) is ``[0, 1, 1, 1]``.
    """
    probs_fine = np.asarray(probs_fine, dtype=float)
    coarse_of = np.asarray(mapping, dtype=int)
    if coarse_of.shape != (probs_fine.shape[1],):
        raise ValueError(f"mapping has {coarse_of.size} entries for {probs_fine.shape[1]} fine classes")
    if coarse_of.min() < 0:
        raise ValueError("mapping entries must be coarse class ids >= 0")
    one_hot = np.zeros((probs_fine.shape[1], int(coarse_of.max()) + 1))
    one_hot[np.arange(len(coarse_of)), coarse_of] = 1.0
    return probs_fine @ one_hot


def contradictions(pred_coarse: np.ndarray, pred_fine: np.ndarray, mapping: Sequence[int]) -> np.ndarray:
    """Mask of rows where a coarse prediction disagrees with the coarsening of the fine one."""
    return np.asarray(pred_coarse) != np.asarray(mapping)[np.asarray(pred_fine)]


def top_down(coarse_probs: np.ndarray, fine_scores: np.ndarray, mapping: Sequence[int]) -> np.ndarray:
    """Fine decisions consistent with the coarse ones: per row, the best-scoring fine class among
    those that ``mapping`` sends to the row's most probable coarse class."""
    coarse_of = np.asarray(mapping, dtype=int)
    chosen = np.asarray(coarse_probs).argmax(axis=1)
    allowed = coarse_of[None, :] == chosen[:, None]
    return np.where(allowed, np.asarray(fine_scores, dtype=float), -np.inf).argmax(axis=1)
