#!/usr/bin/env bash
# The training-budget study: one method's budgets in increasing order, each fit
# attacked with PGD-100 at ε = 2, 4, 8, 16 /255 and aa at 8/255. Resumable: rerun
# the same command and it does only what is missing.
#   OMP_NUM_THREADS=1 bash results/budget/run.sh csi      # and, beside it, ... cobra
set -euo pipefail
method=$1
here=$(cd "$(dirname "$0")" && pwd)
for budget in b1-preset b2-imagenet-10ep b3-cifar-5ep b4-cifar-10ep b5-cifar-30ep; do
    bench run --preset fmnist --config "$here/$budget.yaml" --methods "$method" --attacks pgd \
        --eps 2/255,4/255,8/255,16/255 --out "$here/$method" --quiet
    bench run --preset fmnist --config "$here/$budget.yaml" --methods "$method" --attacks aa \
        --eps 8/255 --out "$here/$method" --quiet
done
