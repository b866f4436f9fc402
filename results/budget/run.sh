#!/usr/bin/env bash
# The training-budget study, for one method: every budget fitted and attacked with
# PGD-100 at ε = 8/255 first (the headline), then PGD-100 at 4/255 and 16/255 (the
# sweep), then aa at 8/255 (the strongest, slowest attack), so that what finishes
# first is what matters most. Resumable: rerun the same command and it does only
# what is missing.
#   OMP_NUM_THREADS=1 bash results/budget/run.sh csi      # and, beside it, ... cobra
# Optional further arguments name the budgets to run (default: all five), e.g.
#   bash results/budget/run.sh cobra b1-preset b2-imagenet-10ep b3-cifar-5ep
set -euo pipefail
method=$1
shift
here=$(cd "$(dirname "$0")" && pwd)
budgets="${*:-b1-preset b2-imagenet-10ep b3-cifar-5ep b4-cifar-10ep b5-cifar-30ep}"
run() { bench run --preset fmnist --config "$here/$1.yaml" --methods "$method" --out "$here/$method" --quiet "${@:2}"; }
for b in $budgets; do run "$b" --attacks pgd --eps 8/255; done
for b in $budgets; do run "$b" --attacks pgd --eps 4/255,8/255,16/255; done
for b in $budgets; do run "$b" --attacks aa --eps 8/255; done
