"""Mutation harness: each listed mutant must make at least one named test fail.

A mutant is a deliberate bug that a review found the test suite did not notice
(so every test named here can fail): an exact source snippet, its replacement, and
the test node ids that must catch it. For each mutant this script copies the
repository (the files git tracks plus untracked, not-ignored ones) to a temporary
folder, applies the edit there and runs

    python -m pytest -x -q -p no:cacheprovider <ids>

in the copy, with ``PYTHONPATH`` pointing at the copy so that the copy's
``robustad`` is imported rather than the installed (editable) one. Before the
mutants it checks that (1) the copy's package is the one imported, (2) a canary
mutant that breaks ``import robustad`` makes the tests fail, and (3) every named
test passes on the unmutated copy, so a KILLED means the mutant was caught.

    python benchmarks/mutants.py            # all mutants
    python benchmarks/mutants.py --list     # names, files and tests
    python benchmarks/mutants.py pgd-no-best-iterate apgd-no-momentum

Exit 0 when every mutant is KILLED, 1 when one SURVIVED, 2 when the harness itself
cannot be trusted (a snippet no longer matches its file: STALE; the baseline fails;
the copy is not what is imported).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutant:
    name: str
    #: (file relative to the repository root, exact snippet, replacement); each snippet
    #: must occur exactly once in its file
    edits: tuple[tuple[str, str, str], ...]
    tests: tuple[str, ...]  # pytest node ids, at least one must fail
    why: str = ""

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f for f, _, _ in self.edits))


MUTANTS: tuple[Mutant, ...] = (
    Mutant(
        "pgd-no-best-iterate",
        (
            (
                "robustad/attacks/pgd.py",
                "                best.update(x_adv, obj)\n",
                "                pass  # mutant: iterates not tracked\n",
            ),
        ),
        ("tests/test_pgd.py::test_pgd_returns_its_best_iterate_when_the_last_is_worse",),
        "PGD keeps only its last iterate (and the clean input)",
    ),
    Mutant(
        "apgd-no-halving",
        (
            (
                "robustad/attacks/apgd.py",
                "eta = torch.where(halve, eta / 2, eta)",
                "eta = torch.where(halve, eta, eta)",
            ),
        ),
        (
            "tests/test_attacks_apgd.py::test_apgd_trajectory_by_hand_momentum_and_halving",
            "tests/test_attacks_apgd.py::test_apgd_halving_reaches_an_interior_optimum",
        ),
        "APGD never halves its step size",
    ),
    Mutant(
        "apgd-no-momentum",
        (("robustad/attacks/apgd.py", "a = 1.0 if k == 0 else self.momentum", "a = 1.0"),),
        ("tests/test_attacks_apgd.py::test_apgd_trajectory_by_hand_momentum_and_halving",),
        "APGD without heavy-ball momentum",
    ),
    Mutant(
        "score-group-term-detached",
        (
            (
                "robustad/methods/contrastive.py",
                "        sim, h = self.normality_terms(x)\n"
                "        return -(sim * self.weight_sim + h * self.weight_group).mean(1)\n",
                "        sim, h = self.normality_terms(x)\n"
                "        return -(sim * self.weight_sim + h.detach() * self.weight_group).mean(1)\n",
            ),
        ),
        (
            "tests/test_cobra.py::test_score_gradient_matches_finite_differences_per_term",
            "tests/test_conformance.py::test_gradients_match_finite_differences_inside_the_box",
        ),
        "CSI/COBRA score with the group-head term's gradient dropped",
    ),
    Mutant(
        "ta-training-mode",
        (
            # the two-logit view behaves as a plain module again (a fresh one is in
            # training mode, torchattacks restores that and train() reaches the
            # detector), and the adapter no longer puts the detector in eval mode
            # before judging the attack's points: both guards of item 2 removed
            ("robustad/attacks/adapter.py", "        self.train(False)\n", ""),
            (
                "robustad/attacks/adapter.py",
                "        self.training = bool(mode)\n        self.detector.eval()\n        return self\n",
                "        return super().train(mode)\n",
            ),
            (
                "robustad/attacks/torchattacks_adapter.py",
                "        detector.eval()  # the view never left eval mode",
                "        pass  # mutant",
            ),
        ),
        ("tests/test_attacks_ta.py::test_ta_scores_in_eval_mode_and_leaves_buffers_alone",),
        "ta:<Name> scores the detector in training mode (BatchNorm batch statistics)",
    ),
    Mutant(
        "identity-view-clamped",
        (
            (
                "robustad/methods/views.py",
                "    if not bool(no_jitter.all()):\n"
                "        jittered = colour_jitter(x, p[:, 5], p[:, 6], p[:, 7], p[:, 8])\n"
                "        x = torch.where(no_jitter.view(-1, 1, 1, 1), x, jittered)\n",
                "    jittered = colour_jitter(x, p[:, 5], p[:, 6], p[:, 7], p[:, 8])\n"
                "    x = torch.where(no_jitter.view(-1, 1, 1, 1), x.clamp(0, 1), jittered)\n",
            ),
        ),
        ("tests/test_conformance.py::test_gradients_match_one_sided_differences_at_the_box_bounds[csi]",),
        "the identity test view goes through Tensor.clamp (zero gradient at 0 and 1 in this torch)",
    ),
    Mutant(
        "clamp-box-masks-bounds",
        (
            (
                "robustad/methods/box.py",
                "inside = (x >= ctx.low) & (x <= ctx.high)",
                "inside = (x > ctx.low) & (x < ctx.high)",
            ),
        ),
        (
            "tests/test_conformance.py::test_gradients_match_one_sided_differences_at_the_box_bounds"
            "[csi-shared-groups]",
            "tests/test_conformance.py::test_gradients_match_one_sided_differences_at_the_box_bounds[cobra]",
        ),
        "the jitter's clamps pass a zero gradient at exactly 0 and 1",
    ),
    Mutant(
        "batch-wide-random-starts",
        (
            (
                "robustad/attacks/base.py",
                "SampleRNG(x, self.seed))",
                "torch.Generator().manual_seed(self.seed))",
            ),
        ),
        (
            "tests/test_gradient_masking.py::test_attack_result_of_a_sample_does_not_depend_on_its_batch",
        ),
        "random starts drawn for the whole batch: a sample's result depends on --batch-size",
    ),
    Mutant(
        "aa-members-share-a-seed",
        (
            (
                "robustad/attacks/aa.py",
                "MEMBER_SEED_OFFSET = {name: i for i, name in enumerate(MEMBERS)}",
                "MEMBER_SEED_OFFSET = {name: 0 for name in MEMBERS}",
            ),
        ),
        (
            "tests/test_gradient_masking.py::"
            "test_aa_members_start_from_different_points_and_report_what_each_adds",
        ),
        "apgd-ce retraces apgd-ad from the same start",
    ),
    Mutant(
        "attacked-may-beat-clean",
        (
            (
                "robustad/benchmark/metrics.py",
                "    return np.where(d * adv >= d * clean, adv, clean)",
                "    return adv",
            ),
        ),
        ("tests/test_gradient_masking.py::test_stochastic_detector_attacked_auroc_never_exceeds_clean",),
        "a stochastic detector's attacked score is a fresh draw, which can beat the clean one",
    ),
    Mutant(
        "box-masking-flag-off",
        (
            (
                "robustad/attacks/base.py",
                "    masked = at_bound & (grad == 0) & (grad_inside != 0)",
                "    masked = at_bound & (grad == 0) & (grad_inside != 0) & False",
            ),
        ),
        ("tests/test_gradient_masking.py::test_box_masking_flag_catches_a_torch_clamp_on_the_score_path",),
        "the per-pixel box check never sees the masking",
    ),
    Mutant(
        "failure-overwrites-done-row",
        (
            (
                "robustad/benchmark/store.py",
                '''                if (old.fetchone() or {"status": None})["status"] == "done":''',
                '''                if False:''',
            ),
        ),
        ("tests/test_config_validation.py::test_store_never_overwrites_a_done_row_with_a_failed_one",),
        "a later failure of a finished job replaces its row and deletes its scores",
    ),
    Mutant(
        "leaderboard-keys-by-name",
        (
            (
                "robustad/benchmark/leaderboard.py",
                "        differ = [k for k in keys if len({_canonical(f.get(k, _UNSET)) "
                "for f in flat.values()}) > 1]",
                "        differ: list = []",
            ),
            (
                "robustad/benchmark/leaderboard.py",
                "            if counts[label] > 1:",
                "            if False:",
            ),
        ),
        ("tests/test_leaderboard.py::test_two_configurations_of_one_method_and_one_attack_are_kept_apart",),
        "two configurations of one method (or attack) share a row (column) and overwrite each other",
    ),
    Mutant(
        "ocsdf-no-padding-correction",
        (("robustad/methods/ocsdf.py", "bjorck_iters) * self.correction", "bjorck_iters)"),),
        ("tests/test_ocsdf.py::test_every_layer_is_orthonormalised_and_bounded",),
        "a convolution of the 1-Lipschitz network is no longer 1-Lipschitz: the certificate lies",
    ),
    Mutant(
        "principals-no-reorthonormalisation",
        (("robustad/methods/principals.py", "        q, r = torch.linalg.qr(comp)\n",
          "        q, r = comp, torch.eye(comp.shape[1], dtype=comp.dtype)\n"),),  # fmt: skip
        ("tests/test_principals.py::test_fitted_pca_projections_are_orthonormal_and_idempotent",),
        "the moving-average PCA directions drift from orthonormal: the projection is not one",
    ),
    Mutant(
        "apae-inner-loop-detached",
        (("robustad/methods/apae.py", "unroll=torch.is_grad_enabled()))", "unroll=False))"),),
        (
            "tests/test_apae.py::test_input_gradient_matches_float64_finite_differences_of_the_whole_procedure",
            "tests/test_conformance.py::test_gradients_match_finite_differences_inside_the_box[apae]",
        ),
        "inner loop detached (BPDA as default): the attack's gradient misses the path through z*",
    ),
    Mutant(
        "deepsvdd-centre-in-train-mode",
        (("robustad/methods/deepsvdd.py", "        self.eval()\n        self._init_center(x)\n",
          "        self.train()\n        self._init_center(x)\n"),),  # fmt: skip
        (
            "tests/test_deepsvdd.py::test_centre_is_the_mean_of_the_eval_mode_embeddings",
            "tests/test_deepsvdd.py::test_pretraining_initialises_the_encoder_from_the_autoencoder",
        ),
        "the centre is the mean of batch-statistics embeddings (BatchNorm in training mode), "
        "not of the network that is trained and scores",
    ),
    Mutant(
        "draem-mask-not-applied",
        (("robustad/methods/draem.py", "    return x * (1 - mask) + mask * ((1 - b) * texture + b * x)\n",
          "    return (1 - b) * texture + b * x  # mutant: blended everywhere\n"),),  # fmt: skip
        ("tests/test_draem.py::test_simulated_anomalies_change_the_image_inside_the_mask_only",),
        "DRÆM's texture is blended into the whole image, not only inside the Perlin mask: the "
        "segmentation target no longer says where the image changed",
    ),
    Mutant(
        "knn-no-chunk-merge",
        (("robustad/methods/knn.py", "        best_d, best_i = d, i\n",
          "        best_d, best_i = (d, i) if best_d is None else (best_d, best_i)  # mutant\n"),),  # fmt: skip  # noqa: E501
        ("tests/test_knn.py::test_knn_distances_equal_scikit_learn",),
        "k-NN over a bank processed in chunks keeps only the first chunk's neighbours",
    ),
    Mutant(
        "knn-sqrt-without-floor",
        (("robustad/methods/knn.py",
          "    return (d2 if squared else d2.clamp_min(SQRT_FLOOR).sqrt()), index\n",
          "    return (d2 if squared else d2.sqrt()), index  # mutant\n"),),  # fmt: skip
        ("tests/test_knn.py::test_knn_gradient_is_finite_at_zero_distance_and_matches_finite_differences",),
        "the square root at zero distance (a query equal to a bank entry) gives an infinite gradient",
    ),
    Mutant(
        "knn-selection-without-gradient",
        (("robustad/methods/knn.py", "        d2 = d2 + (selected - selected.detach())",
          "        d2 = d2 + 0 * (selected - selected.detach())  # mutant"),),  # fmt: skip
        ("tests/test_knn.py::test_knn_gradient_is_finite_at_zero_distance_and_matches_finite_differences",),
        "the k-NN search runs without autograd and the selected distances do not carry the "
        "gradient back: every bank-based score looks flat to the attacks",
    ),
    Mutant(
        "coreset-argmin",
        (("robustad/methods/knn.py", "        i = int(torch.argmax(dist))\n",
          "        i = int(torch.argmin(dist))  # mutant\n"),),  # fmt: skip
        ("tests/test_knn.py::test_approximate_greedy_coreset_equals_brute_force",),
        "the greedy coreset takes the nearest point instead of the farthest",
    ),
    Mutant(
        "weights-no-hash-check",
        (("robustad/methods/weights.py", "    if m and not sha.startswith(m.group(1)):\n",
          "    if False:  # mutant\n"),),  # fmt: skip
        ("tests/test_weights.py::test_a_wrong_hash_prefix_is_refused",),
        "a weights file whose SHA-256 does not match its torchvision name is loaded",
    ),
    Mutant(
        "weights-not-in-fit-identity",
        (("robustad/benchmark/jobs.py",
          '            **({"weights_sha256": self.weights_sha256} if self.weights_sha256 else {}),\n', ""),),  # fmt: skip  # noqa: E501
        ("tests/test_weights.py::test_the_weights_hash_is_part_of_the_fit_identity",),
        "a model fitted on other pretrained weights would be reused as this one",
    ),
    Mutant(
        "random-weights-not-flagged",
        (("robustad/benchmark/leaderboard.py", "                flags.setdefault((row, d, c), set()).add(RANDOM_WEIGHTS)\n",  # noqa: E501
          "                pass  # mutant\n"),),  # fmt: skip
        ("tests/test_weights.py::test_random_weights_are_recorded_and_flagged_in_every_cell",),
        "a pretrained method run on random weights shows unflagged numbers",
    ),
    Mutant(
        "map-attack-wrong-sign",
        (("robustad/attacks/map_attack.py", "    return 1.0 - 2.0 * defect\n",
          "    return 2.0 * defect - 1.0  # mutant\n"),),  # fmt: skip
        ("tests/test_pixel_level.py::test_map_attack_reaches_the_closed_form_optimum",),
        "the map attack helps localisation instead of attacking it",
    ),
    Mutant(
        "budget-check-off",
        (
            (
                "robustad/threat.py",
                "        if (size > self.eps * (1 + 1e-4) + 1e-6).any() or x_adv.min() < 0 or x_adv.max() > 1:\n",  # noqa: E501
                "        if False:  # mutant\n",
            ),
        ),
        ("tests/test_pgd.py::test_budget_check_refuses_points_outside_the_ball_or_the_box",),
        "an attack that leaves the ε-ball or the box is stored as a result",
    ),
    Mutant(
        "download-without-flag",
        (("robustad/datasets/base.py", "    if found is None and download:\n",
          "    if found is None:  # mutant\n"),),  # fmt: skip
        ("tests/test_datasets_arrays.py::test_download_fetches_only_when_asked_and_names_a_failure",),
        "a missing dataset is fetched from the network without --download",
    ),
    Mutant(
        "merge-pairs-other-training",
        (("robustad/benchmark/driver.py",
          '        if model_clean is not None and not _equal(model_clean, (samples or {}).get("clean")):\n',
          "        if False:  # mutant\n"),),  # fmt: skip
        ("tests/test_cli.py::test_merge_never_pairs_a_model_with_attacks_on_another_training",),
        "bench merge stores attacks on one training beside another training's model",
    ),
)

CANARY = Mutant(
    "canary",
    (
        (
            "robustad/version.py",
            '__version__ = "',
            'raise RuntimeError("mutation-harness canary")\n__version__ = "',
        ),
    ),
    (),
)


def repository_files(root: Path) -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        check=True,
        capture_output=True,
    ).stdout.decode()
    return [f for f in out.split("\0") if f and (root / f).is_file()]


def copy_repository(root: Path, dest: Path) -> None:
    for rel in repository_files(root):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target)


def apply(mutant: Mutant, tree: Path) -> str | None:
    """Apply the edits in ``tree``; returns None, or why the mutant is stale."""
    texts = {}
    for file in mutant.files:
        if not (tree / file).is_file():
            return f"{file} does not exist"
        texts[file] = (tree / file).read_text()
    for file, snippet, replacement in mutant.edits:
        count = texts[file].count(snippet)
        if count != 1:
            return f"snippet found {count} times in {file}: {snippet.strip()[:60]!r}"
        texts[file] = texts[file].replace(snippet, replacement)
    for file, text in texts.items():
        (tree / file).write_text(text)
    return None


def environment(tree: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tree), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # no stale bytecode between a mutant and its revert
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_tests(tree: Path, ids: tuple[str, ...], timeout: float) -> tuple[int, str]:
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *ids]
    try:
        proc = subprocess.run(
            cmd, cwd=tree, env=environment(tree), capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return -1, "timed out"
    return proc.returncode, proc.stdout + proc.stderr


def imported_package(tree: Path) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", "import robustad, os; print(os.path.realpath(robustad.__file__))"],
        cwd=tree,
        env=environment(tree),
        capture_output=True,
        text=True,
    )
    return proc.stdout.strip() or proc.stderr.strip()


def tail(text: str, lines: int = 6) -> str:
    return "\n".join("      " + s for s in text.strip().splitlines()[-lines:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="mutants to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per pytest run")
    args = parser.parse_args(argv)

    if args.list:
        for m in MUTANTS:
            print(f"{m.name}: {', '.join(m.files)} — {m.why}")
            for t in m.tests:
                print(f"    {t}")
        return 0
    known = {m.name: m for m in MUTANTS}
    unknown = [n for n in args.names if n not in known]
    if unknown:
        print(f"unknown mutant(s) {unknown}; valid: {', '.join(known)}", file=sys.stderr)
        return 2
    selected = [known[n] for n in args.names] if args.names else list(MUTANTS)

    with tempfile.TemporaryDirectory(prefix="robustad-mutants-") as tmp:
        tree = Path(tmp) / "repo"
        copy_repository(ROOT, tree)

        # 1. the copy's package is the one imported
        where = imported_package(tree)
        if not where.startswith(str(tree.resolve())):
            print(f"the copy's robustad is not imported (got {where}); the results would be meaningless")
            return 2
        # 2. a mutant in the copy reaches the tests (canary: import robustad fails)
        sample_test = selected[0].tests[:1]
        files = {f for m in (CANARY, *selected) for f in m.files if (tree / f).is_file()}
        originals = {f: (tree / f).read_text() for f in files}

        def revert(m: Mutant) -> None:
            for f in m.files:
                if f in originals:
                    (tree / f).write_text(originals[f])

        apply(CANARY, tree)
        code, out = run_tests(tree, sample_test, args.timeout)
        revert(CANARY)
        if code == 0:
            print("the canary mutant (import robustad raises) did not fail the tests: the copy is not used")
            return 2
        # 3. the named tests pass without mutants
        ids = tuple(dict.fromkeys(t for m in selected for t in m.tests))
        t0 = time.time()
        code, out = run_tests(tree, ids, args.timeout)
        if code != 0:
            print(f"the named tests fail on the unmutated copy (exit {code}):\n{tail(out, 15)}")
            return 2
        print(f"baseline: {len(ids)} named tests pass on the unmutated copy ({time.time() - t0:.0f}s)")

        results = []
        for m in selected:
            stale = apply(m, tree)
            if stale is not None:
                results.append((m, "STALE", stale))
            else:
                t0 = time.time()
                code, out = run_tests(tree, m.tests, args.timeout)
                status = "SURVIVED" if code == 0 else "KILLED"
                detail = f"{time.time() - t0:.0f}s, pytest exit {code}"
                if code not in (0, 1):  # not an ordinary test failure: show why
                    detail += "\n" + tail(out)
                results.append((m, status, detail))
            revert(m)
            print(f"{results[-1][1]:9s} {m.name:28s} {results[-1][2]}", flush=True)

    width = max(len(m.name) for m, _, _ in results)
    print("\nmutant".ljust(width + 2) + "  result    what it breaks")
    for m, status, _ in results:
        print(f"{m.name.ljust(width)}  {status:8s}  {m.why}")
    statuses = {s for _, s, _ in results}
    if "STALE" in statuses:
        return 2
    return 1 if "SURVIVED" in statuses else 0


if __name__ == "__main__":
    sys.exit(main())
