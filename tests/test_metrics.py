import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

import robustad as ra
from robustad.benchmark.metrics import attack_metrics, one_sided_scores


def _cases():
    rng = np.random.default_rng(0)
    for t in range(100):
        n = int(rng.integers(2, 200))
        y = rng.integers(0, 2, n)
        y[:2] = [0, 1]
        s = rng.integers(0, 4, n).astype(float) if t % 2 else rng.normal(size=n)  # ties on odd t
        yield s, y


def test_auroc_matches_sklearn_on_random_and_tied_scores():
    for s, y in _cases():
        assert abs(ra.auroc(s, y) - roc_auc_score(y, s)) < 1e-9


def test_aupr_matches_sklearn():
    for s, y in _cases():
        assert abs(ra.aupr(s, y) - average_precision_score(y, s)) < 1e-9


def test_fpr_at_95_tpr_matches_sklearn_roc_curve():
    for s, y in _cases():
        fpr, tpr, _ = roc_curve(y, s)
        assert ra.fpr_at_tpr(s, y) == pytest.approx(fpr[np.argmax(tpr >= 0.95)], abs=1e-12)


def test_auroc_known_values():
    assert ra.auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert ra.auroc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert ra.auroc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == 0.5  # constant detector
    import torch

    assert ra.auroc(torch.tensor([0.1, 0.9]), torch.tensor([0, 1])) == 1.0


def test_auroc_rejects_single_class():
    with pytest.raises(ValueError):
        ra.auroc([0.1, 0.2], [0, 0])


def test_one_sided_aurocs_mix_clean_and_adversarial_scores():
    y = np.array([0, 0, 1, 1])
    clean = np.array([0.0, 1.0, 2.0, 3.0])  # AUROC 1
    adv = np.array([2.5, 3.5, -1.0, 0.5])  # normals pushed up, anomalies down
    assert list(one_sided_scores(clean, adv, y, "normal")) == [2.5, 3.5, 2.0, 3.0]
    assert list(one_sided_scores(clean, adv, y, "anomaly")) == [0.0, 1.0, -1.0, 0.5]
    m = attack_metrics(clean, adv, y)
    assert m["clean_auroc"] == 1.0
    assert m["adv_auroc"] == 0.0
    assert m["adv_auroc_normal_only"] == pytest.approx(0.25)  # of 4 pairs only (2.5, 3.0) is ordered
    assert m["adv_auroc_anomaly_only"] == pytest.approx(0.25)
