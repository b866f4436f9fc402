import pytest
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


def _eval_mode_centre(encoder, x, eta):
    """The centre recomputed independently: eval-mode embeddings, averaged, ε-adjusted."""
    encoder.eval()
    with torch.no_grad():
        c = encoder(x).mean(0)
    near_zero = c.abs() < eta
    return torch.where(near_zero, torch.where(c < 0, -eta, eta), c)


def test_centre_is_the_mean_of_the_eval_mode_embeddings(digits0):
    # epochs=0: the fitted network is the one the centre was computed from. eta=0 leaves
    # the plain mean; eta=0.1 (the default) adds the published push away from zero.
    for eta in (0.0, 0.1):
        torch.manual_seed(0)
        det = ra.create_method("deepsvdd", epochs=0, eta=eta).fit(digits0)
        expected = _eval_mode_centre(det.encoder, digits0.train_x, eta)
        assert torch.allclose(det.center, expected, atol=1e-6, rtol=1e-5)
        # the fit left the BatchNorm running statistics at their initial values (an
        # eval-mode pass does not update them; a training-mode one would have)
        bn = det.encoder.features[1]
        assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
        assert torch.equal(bn.running_var, torch.ones_like(bn.running_var))
        # the check can tell: the training-mode (batch-statistics) mean is far from it
        det.encoder.train()
        with torch.no_grad():
            train_mode = det.encoder(digits0.train_x).mean(0)
        assert (train_mode - det.center).abs().max() > 0.1


def test_pretraining_initialises_the_encoder_from_the_autoencoder(digits0):
    def fit(**params):
        torch.manual_seed(0)
        return ra.create_method("deepsvdd", pretrain_lr=1e-3, **params).fit(digits0, RunContext(seed=0))

    # epochs=0: the one-class phase leaves the initial network as it is
    pre = fit(epochs=0, pretrain_epochs=20)
    ae_state = pre.pretrain_record["encoder_state"]
    state = pre.encoder.state_dict()
    assert state.keys() == ae_state.keys() and any("running_mean" in k for k in state)
    for k in state:  # weights and BatchNorm running statistics
        assert torch.equal(state[k], ae_state[k]), k
    # ... and pretraining moved it away from the random initialisation
    plain = fit(epochs=0)
    assert plain.pretrain_record is None
    assert (pre.encoder.head.weight - plain.encoder.head.weight).abs().max() > 1e-2
    assert pre.info()["pretrain_epochs"] == 20 and pre.info()["pretraining"] == "autoencoder, 20 epochs"
    assert plain.info() == {**plain.info(), "pretraining": "none", "pretrain_epochs": 0}

    # the reconstruction loss falls over pretraining: measured 10.5 → 2.1 (summed squared
    # error per 8×8 image) in 20 epochs at lr 1e-3
    losses = pre.pretrain_record["losses"]
    assert len(losses) == 20
    assert losses[-1] < 0.3 * losses[0]
    assert all(b < a for a, b in zip(losses[:5], losses[1:6]))

    # with one-class training after it, the centre is the eval-mode mean of the
    # pretrained encoder (its running statistics included); the learning rate is divided
    # by 10 from each milestone epoch on
    trained = fit(epochs=3, pretrain_epochs=20, pretrain_lr_milestones=[5, 15])
    assert trained.pretrain_record["lrs"] == pytest.approx([1e-3] * 5 + [1e-4] * 10 + [1e-5] * 5)
    start = ra.create_method("deepsvdd")
    start.build(tuple(digits0.train_x.shape[1:]))
    start.encoder.load_state_dict(trained.pretrain_record["encoder_state"])
    expected = _eval_mode_centre(start.encoder, digits0.train_x, 0.1)
    assert torch.allclose(trained.center, expected, atol=1e-6, rtol=1e-5)
    assert ra.auroc(trained.score_batched(digits0.test_x), digits0.test_y) > 0.95
