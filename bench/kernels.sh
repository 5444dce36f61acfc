#!/usr/bin/env bash
# ALS and k-means iteration times, cohortcast beside implicit and
# scikit-learn on the same matrices and thread count (2), with ratios.
# Usage: bench/kernels.sh [users items nnz factors]   (default 100000 20000 5000000 64)
# Creates a venv under ${BENCH_VENV:-/var/tmp/cc-bench-venv} with implicit and scikit-learn.
set -euo pipefail
cd "$(dirname "$0")/.."
users=${1:-100000} items=${2:-20000} nnz=${3:-5000000} factors=${4:-64}
venv=${BENCH_VENV:-/var/tmp/cc-bench-venv}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q implicit scikit-learn threadpoolctl
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo build --release --quiet --example kernels
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
"$target/release/examples/kernels" "$work" "$users" "$items" "$nnz" "$factors" | tee "$work/ours.jsonl"
OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=2 "$venv/bin/python" bench/kernels.py "$work" "$users" "$items" "$factors" 5.0 | tee "$work/theirs.jsonl"
python3 - "$work/ours.jsonl" "$work/theirs.jsonl" <<'PY'
import json, sys
ours = [json.loads(l) for l in open(sys.argv[1])]
theirs = [json.loads(l) for l in open(sys.argv[2])]
def key(r):
    return (r["kernel"], r.get("k"))
t = {key(r): r for r in theirs}
for r in ours:
    o = t[key(r)]
    label = "ALS" if r["kernel"] == "als" else f'k-means k={r["k"]}'
    print(f'{label:<14} cohortcast {r["seconds_per_iteration"]:.4f} s/it  {o["impl"]} {o["seconds_per_iteration"]:.4f} s/it  '
          f'ratio {r["seconds_per_iteration"] / o["seconds_per_iteration"]:.2f}')
    if r["kernel"] == "als":
        print(f'{"":<14} {r["gflop_per_iteration"]:.1f} GFLOP/it: {r["gflop_per_iteration"] / r["seconds_per_iteration"]:.1f} GFLOP/s '
              f'(2 cores at ~140 GFLOP/s SGEMM each is the ceiling)')
PY
