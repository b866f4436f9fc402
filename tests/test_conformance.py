"""Every registered method passes the conformance suite (robustad.testing.check_detector),
and each check catches the defect it exists for (toy detectors that break one rule each).

Each method runs at a tiny CPU size (one or two epochs on 8×8 digits); the checks are
about the contract (shapes, batch independence, determinism, state, gradients), not
about accuracy, so an under-trained detector is as good a subject as a trained one.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import robustad.testing as T
from robustad.datasets import load_dataset
from robustad.methods.base import Detector
from robustad.registry import METHODS, list_methods

TINY = dict(width=4, blocks=(1, 1), proj_dim=8, batch_size=16, lr=0.05, warmup_epochs=0, max_train=32)

#: name → (registered method, parameters). Every built-in method needs one (see
#: test_every_built_in_method_has_a_config).
CONFIGS = {
    "deepsvdd": ("deepsvdd", dict(width=4, depth=2, rep_dim=8, epochs=2, batch_size=32)),
    # two epochs of autoencoder pretraining before the one-class training
    "deepsvdd-pretrained": (
        "deepsvdd",
        dict(width=4, depth=2, rep_dim=8, epochs=2, batch_size=32, pretrain_epochs=2, pretrain_lr=1e-3),
    ),
    # the central test view (factors 1: no jitter), as in the fmnist preset
    "csi": ("csi", dict(TINY, epochs=1, test_views=1)),
    # groups whose transforms are random, drawn once and shared by every image; two
    # jittered test views (the jitter's clamps are on the score path)
    "csi-shared-groups": (
        "csi",
        dict(TINY, epochs=1, test_views=2, pseudo_anomalies="scar,cutout,elastic,permutation"),
    ),
    "cobra": ("cobra", dict(TINY, epochs=1, test_views=2, train_attack_steps=1)),
    # one warm-up epoch (raw seeds) and one with 2 Newton–Raphson steps
    "ocsdf": (
        "ocsdf",
        dict(widths=(4, 4), convs=(1, 1), warmup_epochs=1, epochs=1, nr_steps=2, batch_size=32),
    ),
    # 1-step adversarial training; the PCA stages are fixed buffers at test time. Trained
    # enough (lr 0.02, 4 epochs) that the reconstruction's share of the input gradient is
    # several % of the direct term's: less, and the gradient checks could not see it masked
    "principals": (
        "principals",
        dict(widths=(4, 4), latent_channels=4, epochs=4, batch_size=32, lr=0.02, train_attack_steps=1),
    ),
    # 3 unrolled inner steps of a larger α than the published 1e-2, so that the inner
    # loop's own share of the input gradient is visible to the finite differences
    "apae": (
        "apae",
        dict(widths=(4, 4), latent_channels=4, latent_dim=8, inner_steps=3, inner_lr=0.05, epochs=20),
    ),
    # lr 1e-3 and 8 epochs: with the published init and a few steps the score barely depends on the image
    "draem": ("draem", dict(rec_width=4, disc_width=4, epochs=8, batch_size=16, lr=1e-3)),
    # random ResNet-18 backbones (no weights can be fetched here); 8×8 digits upsampled to 16 px
    # inside the model, so the k-NN runs over a 2×2 patch grid
    "patchcore": (
        "patchcore",
        dict(backbone="resnet18", weights=None, input_size=16, resize_to=None, embed_dim=64, max_train=32),
    ),
    "patchcore-anomalib": (
        "patchcore",
        dict(backbone="resnet18", weights=None, variant="anomalib", input_size=16, resize_to=None,
             num_neighbors=3, max_train=32),
    ),
    "zarnd": ("zarnd", dict(backbone="resnet18", weights=None, input_size=16, max_train=32)),
    "msad": ("msad", dict(backbone="resnet18", weights=None, input_size=16, resize_to=None, epochs=1,
                          batch_size=16, max_train=32)),
}
NAMES = list(CONFIGS)
N_TEST = 8


@pytest.fixture(scope="module")
def data():
    return load_dataset("digits", 0)


@pytest.fixture(scope="module")
def subject(data):
    """name → (factory, fitted detector, test images); each config fitted once."""
    cache = {}

    def get(name):
        if name not in cache:
            method, params = CONFIGS[name]
            factory = T.detector_factory(method, params)
            cache[name] = (factory, T.check_fit_returns_self(factory, data, seed=0), data.test_x[:N_TEST])
        return cache[name]

    return get


def test_every_built_in_method_has_a_config():
    built_in = {n for n in list_methods() if METHODS.get(n).factory.__module__.startswith("robustad.")}
    assert built_in <= {method for method, _ in CONFIGS.values()}


@pytest.mark.parametrize("name", NAMES)
def test_constructor_does_no_work(name):
    method, params = CONFIGS[name]
    T.check_constructor_does_no_work(T.detector_factory(method, params))


@pytest.mark.parametrize("name", NAMES)
def test_fit_returns_self_and_score_shape_and_dtype(name, subject):
    _, det, x = subject(name)  # fitted by check_fit_returns_self
    T.check_score_shape_and_dtype(det, x)


@pytest.mark.parametrize("name", NAMES)
def test_score_is_independent_of_batch_size_and_order(name, subject):
    _, det, x = subject(name)
    T.check_batch_independence(det, x)


@pytest.mark.parametrize("name", NAMES)
def test_two_fits_with_one_seed_agree(name, subject, data):
    factory, det, x = subject(name)
    T.check_determinism(factory, data, x, seed=0, fitted=det)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(name, subject):
    factory, det, x = subject(name)
    T.check_state_dict_round_trip(factory, det, x)


@pytest.mark.parametrize("name", NAMES)
def test_scoring_leaves_state_unchanged(name, subject):
    _, det, x = subject(name)
    T.check_scoring_leaves_state_unchanged(det, x)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_match_finite_differences_inside_the_box(name, subject):
    _, det, x = subject(name)
    T.check_gradients_interior(det, x)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_match_one_sided_differences_at_the_box_bounds(name, subject):
    _, det, x = subject(name)
    T.check_gradients_at_box_bounds(det, x)


def test_check_detector_runs_the_whole_suite(data):
    det = T.check_detector("deepsvdd", CONFIGS["deepsvdd"][1], data, n_test=4)
    assert det.input_shape == (1, 8, 8)
    with pytest.raises(ValueError, match="unknown check"):
        T.check_detector("deepsvdd", CONFIGS["deepsvdd"][1], data, checks=["check_nothing"])


# -- the checks catch what they are for -------------------------------------------------------
class Toy(Detector):
    """A conforming plug-in: s(x) = Σ w·x + Σ v·x², weights drawn in fit from the seed."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale

    def build(self, input_shape):
        super().build(input_shape)
        self.w = nn.Parameter(torch.zeros(input_shape))
        self.register_buffer("v", torch.zeros(input_shape))

    def fit(self, data, ctx=None):
        self.build(tuple(data.train_x.shape[1:]))
        g = torch.Generator().manual_seed(ctx.seed if ctx else 0)
        with torch.no_grad():
            self.w.copy_(torch.randn(self.w.shape, generator=g))
            self.v.copy_(torch.randn(self.v.shape, generator=g))
        self.eval()
        return self

    def linear(self, x):
        return self.scale * (self.w * x).flatten(1).sum(1)

    def square(self, x):
        return (self.v * x**2).flatten(1).sum(1)

    def score(self, x):
        return self.linear(x) + self.square(x)

    def score_terms(self, x):
        return {"linear": self.linear(x), "square": self.square(x)}


class EagerToy(Toy):
    def __init__(self, scale: float = 1.0):
        super().__init__(scale)
        self.net = nn.Linear(64, 1)  # work in the constructor


class BatchStatToy(Toy):
    def score(self, x):
        return super().score(x - x.mean(0, keepdim=True))  # depends on the other images


class CountingToy(Toy):
    def score(self, x):
        self.v += 0  # a no-op
        self.w.data[0, 0, 0] += 1.0  # but this one drifts with every call
        return super().score(x)


class ClockSeededToy(Toy):
    def fit(self, data, ctx=None):
        import time

        from robustad.methods.base import RunContext

        return super().fit(data, RunContext(seed=time.perf_counter_ns()))


class ReluMaskedToy(Toy):
    def score(self, x):
        return super().score(torch.relu(x))  # relu' = 0 at exactly 0: pixels at 0 frozen


class DetachedTermToy(Toy):
    def score(self, x):
        return self.linear(x) + self.square(x).detach()


def test_a_conforming_plugin_passes_check_detector(data):
    T.check_detector(Toy, {"scale": 2.0}, data, n_test=4)


@pytest.mark.parametrize(
    "toy,failing",
    [
        (EagerToy, "check_constructor_does_no_work"),
        (BatchStatToy, "check_batch_independence"),
        (CountingToy, "check_scoring_leaves_state_unchanged"),
        (ClockSeededToy, "check_determinism"),
        (ReluMaskedToy, "check_gradients_at_box_bounds"),
        (DetachedTermToy, "check_gradients_interior"),
    ],
)
def test_each_check_catches_its_defect(toy, failing, data):
    with pytest.raises(AssertionError, match=failing):
        T.check_detector(toy, {}, data, n_test=4)
    # and the defect is that check's alone where it should be
    if toy is ReluMaskedToy:
        T.check_detector(toy, {}, data, n_test=4, checks=["check_gradients_interior"])
