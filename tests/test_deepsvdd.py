import torch

import robustad as ra
from robustad.methods.base import RunContext, load_detector_state, save_detector


def test_score_independent_of_batch_size_and_order(digits0, trained_svdd):
    x = digits0.test_x[:64]
    full = trained_svdd.score_batched(x, batch_size=64)
    small = trained_svdd.score_batched(x, batch_size=7)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(1))
    shuffled = trained_svdd.score_batched(x[perm], batch_size=64)
    single = torch.cat([trained_svdd.score_batched(x[i : i + 1]) for i in range(64)])
    assert torch.allclose(full, small, atol=1e-5)
    assert torch.allclose(full[perm], shuffled, atol=1e-5)
    assert torch.allclose(full, single, atol=1e-5)


def test_gradients_reach_the_input(digits0, trained_svdd):
    x = digits0.test_x[:8].clone().requires_grad_(True)
    trained_svdd.score(x).sum().backward()
    assert x.grad is not None and (x.grad.flatten(1).abs().sum(1) > 0).all()


def test_save_load_round_trip(tmp_path, digits0, trained_svdd):
    save_detector(trained_svdd, tmp_path / "m.pt")
    fresh = ra.create_method("deepsvdd", epochs=15)
    load_detector_state(fresh, tmp_path / "m.pt")
    assert torch.equal(fresh.center, trained_svdd.center)
    assert torch.equal(fresh.score_batched(digits0.test_x), trained_svdd.score_batched(digits0.test_x))


def test_centre_is_kept_away_from_zero_and_training_lowers_the_loss(digits0):
    losses = []
    ctx = RunContext(seed=0, progress=lambda step, total, logs: losses.append(logs["loss"]))
    torch.manual_seed(0)
    det = ra.create_method("deepsvdd", epochs=10, eta=0.1).fit(digits0, ctx)
    assert (det.center.abs() >= 0.1 - 1e-7).all()
    assert len(losses) == 10
    assert losses[-1] < 0.5 * losses[0]
    # the encoder is bias-free (Ruff et al.: a bias allows the collapsed solution)
    assert all("bias" not in name for name, _ in det.encoder.named_parameters())


def test_trained_deepsvdd_separates_digit_zero(trained_svdd, digits0):
    # Digit 0 vs the rest with the quick settings: measured 99.9% AUROC (seed 0).
    assert ra.auroc(trained_svdd.score_batched(digits0.test_x), digits0.test_y) > 0.95


def test_benchmark_one_call(digits0):
    res = ra.benchmark("deepsvdd", "digits", 0, attacks=["pgd"], method_params={"epochs": 15})
    assert res["clean"]["auroc"] > 0.9
    assert res["attacks"]["pgd"]["adv_auroc"] <= res["clean"]["auroc"]
    assert res["attacks"]["pgd"]["threat"] == {"norm": "Linf", "eps": 8 / 255, "mode": "both"}
