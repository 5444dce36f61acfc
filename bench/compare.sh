#!/usr/bin/env bash
# End to end on one generated dataset: `cohortcast run` beside the Python
# pipeline a data team would write (pandas + implicit ALS + scikit-learn
# KMeans + the same expected-CTR choice, bench/pipeline_python.py), each run
# RUNS times (default 3): median stage timings, peak RSS, ratios, CTR.
# Usage: bench/compare.sh [users] [runs]   (default 50000 users: the demo size)
# The Spark pipeline of issue #3 is not in this script yet.
set -euo pipefail
cd "$(dirname "$0")/.."
users=${1:-50000} runs=${2:-3}
venv=${BENCH_VENV:-/var/tmp/cc-bench-venv}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q implicit scikit-learn threadpoolctl pandas
fi
cargo build --release --quiet
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
bin="$target/release/cohortcast"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$bin" synth --out "$work/data" --users "$users" --seed 42
for i in $(seq "$runs"); do
  /usr/bin/time -v "$bin" run --data "$work/data" --out "$work/out" > /dev/null 2> "$work/ours.$i.time"
  cp "$work/out/summary.json" "$work/ours.$i.json"
  OPENBLAS_NUM_THREADS=1 /usr/bin/time -v "$venv/bin/python" bench/pipeline_python.py "$work/data" \
    > "$work/theirs.$i.json" 2> "$work/theirs.$i.time"
done
python3 - "$work" "$runs" <<'PY'
import json, re, statistics, sys
work, runs = sys.argv[1], int(sys.argv[2])
def rss(path):
    return int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(path).read()).group(1)) / 1024
ours = [json.load(open(f"{work}/ours.{i}.json")) for i in range(1, runs + 1)]
theirs = [json.loads(open(f"{work}/theirs.{i}.json").read().strip().splitlines()[-1]) for i in range(1, runs + 1)]
print(f"{ours[0]['users']} users, {ours[0]['inputs']['plays']} plays; medians of {runs} runs (seconds)")
print(f"{'stage':<10} {'cohortcast':>11} {'python':>9} {'speed-up':>9}")
for st in ["ingest", "als", "kmeans", "targeting", "total"]:
    a = statistics.median(o["timings_s"][st] for o in ours)
    b = statistics.median(t["timings_s"][st] for t in theirs)
    print(f"{st:<10} {a:>11.2f} {b:>9.2f} {b / a:>8.1f}x")
ra = statistics.median(rss(f"{work}/ours.{i}.time") for i in range(1, runs + 1))
rb = statistics.median(rss(f"{work}/theirs.{i}.time") for i in range(1, runs + 1))
print(f"{'peak RSS':<10} {ra:>9.0f}MB {rb:>7.0f}MB")
pol = {r["policy"]: r for r in ours[0]["ctr"]}
print(f"expected CTR: cohortcast {100 * pol['expected-ctr']['expected_ctr']:.2f}%, python {100 * theirs[0]['expected_ctr']:.2f}%, "
      f"oracle {100 * pol['oracle']['expected_ctr']:.2f}%; realised CTR: cohortcast {100 * pol['expected-ctr']['overall_ctr']:.2f}%, "
      f"python {100 * theirs[0]['ctr']:.2f}%")
print(f"(user, artist) pairs: cohortcast {ours[0]['inputs']['user_artist_pairs']}, python {theirs[0]['pairs']}")
PY
