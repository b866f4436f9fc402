"""Detectors with closed-form worst cases, for tests and for checking new attacks.

``LinearDetector``: s(x) = mean(x). Under L∞ the worst case raises every pixel
of a normal sample by ε and lowers every pixel of an anomalous one by ε, clipped
to [0,1]; under L2 (pixels away from the box) it moves every pixel by ε/√n.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from robustad.methods.base import Detector
from robustad.threat import ThreatModel


class LinearDetector(Detector):
    """s(x) = scale · mean over pixels of x; needs no fitting."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale
        self._anchor = nn.Parameter(torch.zeros(()), requires_grad=False)  # carries the device

    def fit(self, data, ctx=None) -> LinearDetector:
        self.build(tuple(data.train_x.shape[1:]))
        return self

    def score(self, x: Tensor) -> Tensor:
        return self.scale * x.flatten(1).mean(1) + self._anchor


def linear_worst_case(x: Tensor, y: Tensor, threat: ThreatModel) -> Tensor:
    """The exact maximiser of d·mean(x+δ) (L2: valid when no pixel hits the box)."""
    d = (1.0 - 2.0 * y.float()).view(-1, *([1] * (x.dim() - 1)))
    if threat.norm == "Linf":
        return (x + d * threat.eps).clamp(0, 1)
    n = x[0].numel()
    return x + d * threat.eps / math.sqrt(n)


# -- the conformance suite ------------------------------------------------------------------
# In the spirit of scikit-learn's ``check_estimator``: every check is a function a plug-in
# author can call on their own method; ``check_detector`` runs them all. A check raises
# ``AssertionError`` with one sentence saying what broke.

#: the checks ``check_detector`` runs, in order (names of the functions below)
CHECKS = (
    "check_constructor_does_no_work",
    "check_fit_returns_self",
    "check_score_shape_and_dtype",
    "check_batch_independence",
    "check_determinism",
    "check_state_dict_round_trip",
    "check_scoring_leaves_state_unchanged",
    "check_gradients_interior",
    "check_gradients_at_box_bounds",
)


def detector_factory(method, params: dict | None = None):
    """A zero-argument callable that builds a fresh, unfitted detector.

    ``method``: a registered name (built with ``METHODS.create(name, **params)``), a
    class or any callable taking ``**params``.
    """
    params = dict(params or {})
    if isinstance(method, str):
        from robustad.registry import METHODS

        return lambda: METHODS.create(method, **params)
    return lambda: method(**params)


def _seed_all(seed: int) -> None:
    # What the runner does before a fit (robustad.benchmark.runner.seed_everything).
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def fit_detector(factory, data, seed: int = 0, device: str = "cpu") -> Detector:
    """``factory().fit(data, RunContext(seed, device))`` with the global RNGs seeded as the runner does."""
    from robustad.methods.base import RunContext

    _seed_all(seed)
    return factory().fit(data, RunContext(seed=seed, device=device))


def _on_device(detector: Detector, x: Tensor) -> Tensor:
    return x.to(next(detector.parameters(), torch.empty(0)).device)


def _scale(t: Tensor) -> float:
    return max(1.0, float(t.abs().max())) if t.numel() else 1.0


def check_constructor_does_no_work(factory) -> None:
    """The constructor only stores parameters: no modules, parameters or buffers, no
    tensors, no input shape, and no draw from the global RNG (weights are made in fit)."""
    rng = torch.get_rng_state()
    det = factory()
    assert torch.equal(rng, torch.get_rng_state()), "the constructor drew from the global RNG"
    name = type(det).__name__
    assert isinstance(det, Detector), f"{name} is not a robustad Detector"
    assert det.input_shape is None, f"{name}'s constructor set input_shape (build belongs in fit)"
    params = [n for n, _ in det.named_parameters()]
    buffers = [n for n, _ in det.named_buffers()]
    children = [n for n, _ in det.named_children()]
    assert not params, f"{name}'s constructor created parameters {params} (create them in build/fit)"
    assert not buffers, f"{name}'s constructor created buffers {buffers} (create them in build/fit)"
    assert not children, f"{name}'s constructor created submodules {children} (create them in build/fit)"
    heavy = [k for k, v in vars(det).items() if isinstance(v, (Tensor, nn.Module))]
    assert not heavy, f"{name}'s constructor stored tensors/modules {heavy}"


def check_fit_returns_self(factory, data, seed: int = 0, device: str = "cpu") -> Detector:
    """``fit`` returns the detector itself, built for the data. Returns the fitted detector."""
    from robustad.methods.base import RunContext

    _seed_all(seed)
    det = factory()
    out = det.fit(data, RunContext(seed=seed, device=device))
    assert out is det, f"{type(det).__name__}.fit returned {type(out).__name__}, not self"
    assert det.input_shape == tuple(data.train_x.shape[1:]), "fit did not build for the data's input shape"
    return det


def check_score_shape_and_dtype(detector: Detector, x: Tensor) -> None:
    """``score`` maps (N,C,H,W) to finite floats of shape (N,), one image included;
    ``score_batched`` gives (N,) float32 on the CPU."""
    detector.eval()
    x = _on_device(detector, x)
    for n in (len(x), 1):
        with torch.no_grad():
            s = detector.score(x[:n])
        assert isinstance(s, Tensor) and s.shape == (n,), (
            f"score of {n} image(s) has shape {tuple(s.shape)}, not ({n},)"
        )
        assert s.is_floating_point(), f"score has dtype {s.dtype}, not a float"
        assert torch.isfinite(s).all(), "score is not finite"
    sb = detector.score_batched(x.cpu())
    assert sb.shape == (len(x),) and sb.dtype == torch.float32 and sb.device.type == "cpu", (
        f"score_batched gave {tuple(sb.shape)} {sb.dtype} on {sb.device}, not ({len(x)},) float32 on the CPU"
    )


def check_batch_independence(detector: Detector, x: Tensor, atol: float = 1e-5, seed: int = 0) -> None:
    """Each image's score depends on that image alone: batch sizes 1, 3 and all, and a
    permuted batch, give the same scores (to ``atol`` times the score scale)."""
    full = detector.score_batched(x, batch_size=len(x))
    tol = atol * _scale(full)
    for bs in (1, 3):
        other = detector.score_batched(x, batch_size=bs)
        gap = (other - full).abs().max().item()
        assert gap <= tol, f"scores with batch size {bs} differ from one batch by {gap:.3g}"
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    permuted = detector.score_batched(x[perm], batch_size=len(x))
    gap = (permuted - full[perm]).abs().max().item()
    assert gap <= tol, f"scores of a permuted batch differ by {gap:.3g}"


def check_determinism(
    factory, data, x: Tensor, seed: int = 0, fitted: Detector | None = None, device: str = "cpu"
) -> None:
    """Two fits with the same seed give identical scores (``fitted``: one already made)."""
    a = fitted if fitted is not None else fit_detector(factory, data, seed, device)
    b = fit_detector(factory, data, seed, device)
    sa, sb = a.score_batched(x), b.score_batched(x)
    assert torch.equal(sa, sb), (
        f"two fits with seed {seed} give scores differing by {(sa - sb).abs().max().item():.3g}"
    )


def check_state_dict_round_trip(factory, detector: Detector, x: Tensor) -> None:
    """``save_detector`` then ``load_detector_state`` into a fresh detector gives identical scores."""
    import tempfile
    from pathlib import Path

    from robustad.methods.base import load_detector_state, save_detector

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "detector.pt"
        save_detector(detector, path)
        fresh = load_detector_state(factory(), path)
    fresh.to(next(detector.parameters(), torch.empty(0)).device)
    assert set(fresh.state_dict()) == set(detector.state_dict()), "the loaded state has different keys"
    sa, sb = detector.score_batched(x), fresh.score_batched(x)
    assert torch.equal(sa, sb), f"reloaded scores differ by {(sa - sb).abs().max().item():.3g}"
    assert not fresh.training, "load_detector_state left the detector in training mode"


def check_scoring_leaves_state_unchanged(detector: Detector, x: Tensor) -> None:
    """Scoring (with and without gradients) changes no parameter or buffer, keeps the
    module and all its submodules in eval mode, keeps ``requires_grad`` flags, and (for
    detectors not declared ``stochastic``) draws nothing from the global RNG."""
    detector.eval()
    x = _on_device(detector, x)
    before = {k: v.detach().clone() for k, v in detector.state_dict().items()}
    flags = {n: p.requires_grad for n, p in detector.named_parameters()}
    rng = torch.get_rng_state()
    xg = x.clone().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(detector.score(xg).sum(), xg)
    with torch.no_grad():
        detector.score(x)
    detector.score_batched(x.cpu(), batch_size=3)
    if not getattr(detector, "stochastic", False):
        assert torch.equal(rng, torch.get_rng_state()), "scoring drew from the global RNG"
    training = [n or "<root>" for n, m in detector.named_modules() if m.training]
    assert not training, f"scoring in eval mode left modules in training mode: {training}"
    after = detector.state_dict()
    assert set(after) == set(before), f"scoring added/removed state entries {set(after) ^ set(before)}"
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"scoring changed the state entries {changed}"
    moved = [n for n, p in detector.named_parameters() if p.requires_grad != flags[n]]
    assert not moved, f"scoring changed requires_grad of {moved}"


def score_terms(detector: Detector, x: Tensor) -> dict[str, Tensor]:
    """The score and its terms, each reduced to (N,): ``{"score": s(x), <term>: ...}``.

    Terms come from ``detector.score_terms(x) -> dict[str, Tensor]`` when the detector
    has one; robustad's contrastive detectors (CSI, COBRA) without it expose their
    two normality terms through ``normality_terms(x)``. A term with more than one
    value per image is summed over them.
    """
    out = {"score": detector.score(x)}
    fn = getattr(detector, "score_terms", None)
    if callable(fn):
        extra = dict(fn(x))
    elif callable(getattr(detector, "normality_terms", None)):
        extra = {f"normality_terms[{i}]": t for i, t in enumerate(detector.normality_terms(x))}
    else:
        extra = {}
    for name, t in extra.items():
        out[name] = t.reshape(len(x), -1).sum(1)
    return out


def _float64_copy(detector: Detector) -> Detector:
    import copy

    return copy.deepcopy(detector).double().eval()


def _per_image_offsets(x: Tensor, index: Tensor, step: Tensor) -> Tensor:
    """A tensor like x, zero except ``step[i]`` at flat pixel ``index[i]`` of image i."""
    e = torch.zeros_like(x).flatten(1)
    e[torch.arange(len(x), device=x.device), index] = step
    return e.view_as(x)


def _compare_gradients(
    det64: Detector,
    x: Tensor,
    coords: Tensor,
    sides: Tensor,
    rtol: float,
    h: float,
    where: str,
) -> None:
    """Autograd vs finite differences at flat pixels ``coords`` (N,M) of the float64 copy.

    ``sides`` (N,M): 0 = central difference, +1 / -1 = one-sided (second order) along
    +e / −e, for pixels at the lower / upper bound. A mismatch counts when it exceeds
    ``rtol`` times the finite difference plus ``rtol`` times the image's largest
    gradient (so a pixel whose true gradient is negligible never counts).
    """
    xg = x.clone().requires_grad_(True)
    with torch.enable_grad():
        terms = score_terms(det64, xg)
        names = list(terms)
        grads = {}
        for i, name in enumerate(names):
            t = terms[name]
            if not t.requires_grad:
                raise AssertionError(f"the score term {name!r} does not depend differentiably on the input")
            (g,) = torch.autograd.grad(t.sum(), xg, retain_graph=i < len(names) - 1)
            grads[name] = g.flatten(1)
    coords, sides = coords.to(x.device), sides.to(x.device)
    problems = []
    with torch.no_grad():
        f0 = score_terms(det64, x)
        for j in range(coords.shape[1]):
            idx, side = coords[:, j], sides[:, j].to(x.dtype)
            central = side == 0
            s = torch.where(central, torch.ones_like(side), side)
            f1 = score_terms(det64, x + _per_image_offsets(x, idx, s * h))
            f2 = score_terms(det64, x + _per_image_offsets(x, idx, s * 2 * h))
            fm = score_terms(det64, x - _per_image_offsets(x, idx, s * h))
            for name in names:
                fd_central = (f1[name] - fm[name]) / (2 * h)
                # (−3 f(x) + 4 f(x + s·h) − f(x + 2 s·h)) / 2h is the derivative along s·e
                fd_one_sided = s * (-3 * f0[name] + 4 * f1[name] - f2[name]) / (2 * h)
                fd = torch.where(central, fd_central, fd_one_sided)
                g = grads[name]
                ad = g[torch.arange(len(x), device=x.device), idx]
                tol = rtol * fd.abs() + rtol * g.abs().amax(1) + 1e-12
                bad = (ad - fd).abs() > tol
                for i in bad.nonzero().flatten().tolist():
                    pix = int(idx[i])
                    value = float(x.flatten(1)[i, pix])
                    problems.append(
                        f"{name}: image {i} pixel {pix} (x={value:.3g}): autograd {float(ad[i]):.6g}, "
                        f"finite difference {float(fd[i]):.6g}"
                    )
    if problems:
        shown = "; ".join(problems[:6])
        raise AssertionError(
            f"autograd disagrees with float64 finite differences {where} at {len(problems)} point(s): {shown}"
        )


def interior_inputs(x: Tensor, seed: int = 0) -> Tensor:
    """Images strictly inside the box, in [0.05, 0.95]: 0.7·x + 0.3·noise, rescaled.

    The noise breaks exact ties (flat backgrounds feeding a max-pool), where no
    derivative exists and autograd picks one branch.
    """
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(seed)).to(x.device, x.dtype)
    return 0.05 + 0.9 * (0.7 * x + 0.3 * u)


def boundary_inputs(x: Tensor, blocks: int = 4, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Images with 3×3 blocks set exactly to 0 or to 1, the rest as :func:`interior_inputs`.

    Returns the images, the flat index of each block's centre pixel (N, blocks) and
    the inward side of each (+1 at 0, −1 at 1). A whole block is at the bound so that
    resampling (crops) keeps the centre's neighbourhood at the bound, as on a real
    black background. Blocks sit on a grid 3 px apart, off the image border, valued
    as a checkerboard (random phase per image): no two positions of a convolution see
    the same patch, so no max-pool sees a tie, where no derivative exists.
    """
    n, c, h, w = x.shape
    g = torch.Generator().manual_seed(seed + 1)
    xb = interior_inputs(x, seed).clone()
    ys = list(range(2, h - 2, 3)) or [h // 2]
    xs = list(range(2, w - 2, 3)) or [w // 2]
    grid = torch.tensor([(iy, ix) for iy in range(len(ys)) for ix in range(len(xs))])
    m = min(blocks, len(grid))
    index = torch.zeros(n, m, dtype=torch.long)
    sides = torch.zeros(n, m)
    for i in range(n):
        pick = grid[torch.randperm(len(grid), generator=g)[:m]]
        phase = int(torch.randint(2, (1,), generator=g))
        for j, (iy, ix) in enumerate(pick.tolist()):
            cy, cx = ys[iy], xs[ix]
            value = float((iy + ix + phase) % 2)
            xb[i, :, max(cy - 1, 0) : cy + 2, max(cx - 1, 0) : cx + 2] = value
            index[i, j] = cy * w + cx  # channel 0
            sides[i, j] = 1.0 - 2.0 * value
    return xb, index, sides


def check_gradients_interior(
    detector: Detector,
    x: Tensor,
    coords_per_image: int = 6,
    rtol: float = 1e-3,
    h: float = 1e-6,
    seed: int = 0,
) -> None:
    """The autograd gradient of the score and of each score term matches a float64
    central finite difference at random pixels of images inside the box (0.05, 0.95)."""
    det64 = _float64_copy(detector)
    x64 = interior_inputs(_on_device(detector, x).double(), seed)
    g = torch.Generator().manual_seed(seed + 2)
    coords = torch.stack(
        [torch.randperm(x[0].numel(), generator=g)[:coords_per_image] for _ in range(len(x))]
    )
    _compare_gradients(det64, x64, coords, torch.zeros(coords.shape), rtol, h, "inside the box")


def check_gradients_at_box_bounds(
    detector: Detector, x: Tensor, blocks: int = 4, rtol: float = 1e-3, h: float = 1e-6, seed: int = 0
) -> None:
    """At pixels exactly 0 or 1 the autograd gradient of the score and of each score term
    matches a float64 ONE-SIDED (inward) finite difference.

    This is the check that catches gradient masking by clamps: a clamp whose gradient is
    zero at its bounds (``Tensor.clamp`` in some torch builds) freezes every pixel that is
    exactly 0 or 1, while the score does change when such a pixel moves into the box.
    """
    det64 = _float64_copy(detector)
    x64, coords, sides = boundary_inputs(_on_device(detector, x).double(), blocks, seed)
    _compare_gradients(det64, x64, coords, sides, rtol, h, "at pixels equal to 0 or 1")


def check_detector(
    method,
    params: dict | None = None,
    data=None,
    *,
    seed: int = 0,
    n_test: int = 8,
    checks: list[str] | tuple[str, ...] | None = None,
    device: str = "cpu",
) -> Detector:
    """Run the conformance checks on a detector; raise ``AssertionError`` listing every failure.

    ``method``: a registered name, a Detector class or a callable building one from
    ``params``. ``data``: a :class:`~robustad.datasets.OneClassData` to fit on (default:
    digits, normal class 0; keep the method's parameters small). ``checks``: names from
    :data:`CHECKS` (default: all). ``device``: where to fit and score. Returns the
    fitted detector.

        from robustad.testing import check_detector
        check_detector("deepsvdd", {"epochs": 2})
    """
    import sys

    if data is None:
        from robustad.datasets import load_dataset

        data = load_dataset("digits", 0)
    factory = detector_factory(method, params)
    x = data.test_x[:n_test]
    selected = list(CHECKS if checks is None else checks)
    unknown = sorted(set(selected) - set(CHECKS))
    if unknown:
        raise ValueError(f"unknown check(s) {unknown}; choose from {', '.join(CHECKS)}")
    here = sys.modules[__name__]
    failures = []
    detector = None
    try:
        detector = check_fit_returns_self(factory, data, seed, device)
    except AssertionError as exc:
        failures.append(f"check_fit_returns_self: {exc}")
        detector = fit_detector(factory, data, seed, device)
    for name in selected:
        if name == "check_fit_returns_self":
            continue
        fn = getattr(here, name)
        try:
            if name == "check_constructor_does_no_work":
                fn(factory)
            elif name == "check_determinism":
                fn(factory, data, x, seed, fitted=detector, device=device)
            elif name == "check_state_dict_round_trip":
                fn(factory, detector, x)
            else:
                fn(detector, x)
        except AssertionError as exc:
            failures.append(f"{name}: {exc}")
    if failures:
        raise AssertionError("detector conformance failed:\n" + "\n".join(failures))
    return detector
