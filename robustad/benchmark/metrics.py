"""Image-level metrics on anomaly scores (anomaly = positive class, higher = more anomalous).

All functions take 1-D arrays (numpy or torch) of scores and 0/1 labels and
return floats in [0, 1]; the leaderboard multiplies AUROC by 100.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def _np(a) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64).ravel()


def _check(scores: np.ndarray, labels: np.ndarray) -> None:
    if scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} differ in shape")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 (normal) or 1 (anomalous)")
    if labels.min() == labels.max():
        raise ValueError("AUROC needs both normal and anomalous samples")


def auroc(scores, labels) -> float:
    """Area under the ROC curve = P(s_anomaly > s_normal) + ½ P(tie) (Mann–Whitney U)."""
    s, y = _np(scores), _np(labels)
    _check(s, y)
    ranks = rankdata(s)  # average ranks handle ties exactly as the ROC's diagonal steps
    n_pos = y.sum()
    n_neg = len(y) - n_pos
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) at every distinct score, highest threshold first."""
    s, y = _np(scores), _np(labels)
    _check(s, y)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_run = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tps = np.cumsum(y)[last_of_run]
    fps = (last_of_run + 1) - tps
    return fps / fps[-1], tps / tps[-1], s[last_of_run]


def aupr(scores, labels) -> float:
    """Average precision with anomalies as positives (step-wise, as scikit-learn's)."""
    s, y = _np(scores), _np(labels)
    _check(s, y)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_run = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tps = np.cumsum(y)[last_of_run]
    precision = tps / (last_of_run + 1)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def fpr_at_tpr(scores, labels, tpr_level: float = 0.95) -> float:
    """False-positive rate at the first threshold whose TPR reaches ``tpr_level``."""
    fpr, tpr, _ = roc_curve(scores, labels)
    return float(fpr[np.searchsorted(tpr, tpr_level - 1e-12)])


def one_sided_scores(clean, adv, labels, mode: str) -> np.ndarray:
    """Scores as if only normals (``normal``) or only anomalies (``anomaly``) were attacked.

    Each sample is attacked on its own, so mixing stored clean and adversarial
    scores gives the one-sided results without extra attack runs.
    """
    c, a, y = _np(clean), _np(adv), _np(labels)
    if mode == "both":
        return a
    if mode == "normal":
        return np.where(y == 0, a, c)
    if mode == "anomaly":
        return np.where(y == 1, a, c)
    raise ValueError(f"unknown attack mode {mode!r}")


def score_metrics(scores, labels, prefix: str = "") -> dict[str, float]:
    return {
        f"{prefix}auroc": auroc(scores, labels),
        f"{prefix}aupr": aupr(scores, labels),
        f"{prefix}fpr95": fpr_at_tpr(scores, labels),
    }


def at_least_clean(clean, adv, labels) -> np.ndarray:
    """Per sample, the attacked score or the clean one, whichever has the higher
    objective ``d·s``: the clean input is always one of the attacker's points, so an
    attacked AUROC can never exceed the clean one, even for a stochastic detector
    whose clean and attacked scores are different draws."""
    clean, adv, labels = _np(clean), _np(adv), _np(labels)
    d = 1.0 - 2.0 * labels.astype(np.float64)
    return np.where(d * adv >= d * clean, adv, clean)


def attack_metrics(clean, adv, labels) -> dict[str, float]:
    """Clean, attacked and one-sided metrics from per-sample clean and attacked scores."""
    out = score_metrics(clean, labels, "clean_")
    out.update(score_metrics(adv, labels, "adv_"))
    out["adv_auroc_normal_only"] = auroc(one_sided_scores(clean, adv, labels, "normal"), labels)
    out["adv_auroc_anomaly_only"] = auroc(one_sided_scores(clean, adv, labels, "anomaly"), labels)
    return out


def certified_auroc(clean_scores, labels, lipschitz: float, eps: float) -> float:
    """The AUROC no attack within an L2 ball of radius ``eps`` can go below.

    When the score is ``lipschitz``-Lipschitz in L2 on the attacked pixels, a
    perturbation ‖δ‖₂ ≤ ε moves each score by at most L·ε. The worst case raises every
    normal score and lowers every anomalous one by L·ε; its AUROC (ties counting ½,
    as for attacked scores) is a lower bound on the AUROC under any such attack.
    """
    s, y = _np(clean_scores), _np(labels)
    _check(s, y)
    if not (lipschitz >= 0 and eps >= 0):
        raise ValueError(f"the Lipschitz constant ({lipschitz}) and ε ({eps}) must be ≥ 0")
    shift = float(lipschitz) * float(eps)
    return auroc(np.where(y == 1, s - shift, s + shift), y)


def certified_metrics(detector, threat, clean, labels) -> dict[str, float]:
    """``{"certified_auroc": ...}`` for an L2 threat and a detector that declares its
    L2 Lipschitz constant (``Detector.lipschitz_l2()`` not None); ``{}`` otherwise."""
    declare = getattr(detector, "lipschitz_l2", None)
    lipschitz = declare() if callable(declare) else None
    if lipschitz is None or threat.norm != "L2":
        return {}
    return {"certified_auroc": certified_auroc(clean, labels, lipschitz, threat.eps)}


def pixel_auroc(maps, masks) -> float:
    """Pixel-level AUROC of anomaly maps against ground-truth masks (MVTec/VisA localisation).

    ``maps``: (N,H,W) per-pixel anomaly scores (higher = more anomalous), from a
    detector's ``anomaly_map``; ``masks``: (N,H,W) pixel labels, 0 normal / non-zero
    anomalous (``OneClassData.test_masks``). Every pixel of every image is one
    sample, as in the MVTec AD protocol, so normal images contribute only negatives.
    """
    shape_m = tuple(maps.shape) if hasattr(maps, "shape") else np.shape(maps)
    shape_y = tuple(masks.shape) if hasattr(masks, "shape") else np.shape(masks)
    m, y = _np(maps), _np(masks)
    if shape_m != shape_y:
        raise ValueError(f"anomaly maps {shape_m} and masks {shape_y} differ in shape; resize the maps")
    return auroc(m, (y > 0).astype(np.float64))
