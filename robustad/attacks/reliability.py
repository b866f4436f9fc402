"""Reliability flags of docs/THREAT_MODEL.md, as pure functions of attack results.

- ``zero-grad``: more than 10% of samples had an all-zero input gradient.
- ``box-masking``: more than 1% of the pixels sit at a bound of the box (0 or 1)
  with a zero gradient there and a non-zero one just inside it: a clamp or another
  flat piece of the score hides a direction the attacker can move in
  (``attacks/base.gradient_diagnostics``).
- ``masking?``: the black-box Square reaches an AUROC more than 1 point below a
  white-box attack on the same model and threat: that white-box number
  overstates robustness (gradient masking). Raised on the white-box result,
  and on ``aa`` when its own Square member beats its APGD members.
- ``non-monotone``: in an ε sweep of one attack on one model, AUROC rose as ε
  grew (the larger ball contains the smaller one, so the attack is too weak).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

ZERO_GRAD_THRESHOLD = 0.10
BOX_MASKING_THRESHOLD = 0.01  # fraction of all pixels
MASKING_MARGIN = 0.01  # AUROC as a fraction: one point
#: AUROC rises smaller than this are float noise, not a non-monotone sweep
MONOTONE_TOLERANCE = 1e-9

ZERO_GRAD = "zero-grad"
BOX_MASKING = "box-masking"
MASKING = "masking?"
NON_MONOTONE = "non-monotone"


def job_flags(info: dict[str, Any]) -> list[str]:
    """Flags decided by one eval job's diagnostics (``zero_grad_frac``, ``box_masked_frac``,
    ``member_auroc``)."""
    flags = []
    if info.get("zero_grad_frac", 0.0) > ZERO_GRAD_THRESHOLD:
        flags.append(ZERO_GRAD)
    if info.get("box_masked_frac", 0.0) > BOX_MASKING_THRESHOLD:
        flags.append(BOX_MASKING)
    members = info.get("member_auroc") or {}
    white = [v for k, v in members.items() if k != "square"]
    if "square" in members and white and members["square"] < min(white) - MASKING_MARGIN:
        flags.append(MASKING)
    return flags


def cross_job_flags(rows: list[dict[str, Any]], white_box: dict[str, bool]) -> dict[str, list[str]]:
    """Flags that compare eval jobs of one fitted model.

    ``rows``: finished eval rows of one fit (``job_id``, ``attack``, ``norm``, ``eps``,
    ``config['params']``, ``metrics['adv_auroc']``); ``white_box[attack]`` says whether
    an attack uses gradients. Returns ``{job_id: [flag, ...]}`` for flagged jobs.
    """
    out: dict[str, list[str]] = defaultdict(list)
    by_threat: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        by_threat[(r["norm"], round(r["eps"], 10))].append(r)
    for group in by_threat.values():
        squares = [r["metrics"]["adv_auroc"] for r in group if r["attack"] == "square"]
        if not squares:
            continue
        square = min(squares)
        for r in group:
            # aa contains Square, so it judges masking from its own members.
            if r["attack"] in ("square", "aa") or not white_box.get(r["attack"], False):
                continue
            if square < r["metrics"]["adv_auroc"] - MASKING_MARGIN:
                out[r["job_id"]].append(MASKING)
    by_sweep: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        params = repr(sorted((r.get("config") or {}).get("params", {}).items()))
        by_sweep[(r["attack"], params, r["norm"])].append(r)
    for sweep in by_sweep.values():
        sweep = sorted(sweep, key=lambda r: r["eps"])
        for prev, cur in zip(sweep, sweep[1:]):
            if cur["metrics"]["adv_auroc"] > prev["metrics"]["adv_auroc"] + MONOTONE_TOLERANCE:
                out[cur["job_id"]].append(NON_MONOTONE)
    return dict(out)
