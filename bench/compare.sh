#!/usr/bin/env bash
# End to end on one generated dataset, three ways, each run RUNS times
# (default 3) in turn on the same files:
#   1. `cohortcast run`;
#   2. the Python pipeline a data team would write (pandas + implicit ALS +
#      scikit-learn KMeans + the same expected-CTR choice: pipeline_python.py);
#   3. the course pipeline on pyspark in local mode (StringIndexer, ALS
#      implicitPrefs rank 10, KMeans, most-played artist per cluster:
#      pipeline_spark.py; needs Java 17).
# Prints median stage timings, the median of the run-by-run speed-ups, peak
# RSS (/usr/bin/time -v) and the CTR of each on the same click log.
# Usage: bench/compare.sh [users] [runs] [plays-per-user] [skip] [other-runs]
#   users: 50000 (small, ~3M plays) or 500000 (medium, ~30M plays)
#   skip: "spark", "python" or "both" to leave them out (say so when you quote it)
#   other-runs: runs of the Python and Spark pipelines (default: runs); the
#     speed-ups pair run i with run i
# COMPARE_MODEL="F I" runs cohortcast and the Python pipeline at F factors
# and I iterations instead of the defaults (64 10); Spark keeps its course
# model (rank 10, 10 iterations) either way.
# Peak RSS is the summed RSS of each process tree (bench/peak_rss.sh), so the
# JVM under pyspark is counted.
set -euo pipefail
cd "$(dirname "$0")/.."
users=${1:-50000} runs=${2:-3} ppu=${3:-60} skip=${4:-none} oruns=${5:-${2:-3}}
venv=${BENCH_VENV:-/var/tmp/cc-bench-venv}
read -r factors iterations <<< "${COMPARE_MODEL:-64 10}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q implicit scikit-learn threadpoolctl pandas pyspark==3.5.3
fi
cargo build --release --quiet
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
bin="$target/release/cohortcast"
work=$(mktemp -d -p "${BENCH_TMP:-/var/tmp}")
trap 'rm -rf "$work"' EXIT
if [ -n "${COMPARE_DATA:-}" ]; then
  ln -s "$COMPARE_DATA" "$work/data"   # data generated earlier with the same arguments
else
  "$bin" synth --out "$work/data" --users "$users" --plays-per-user "$ppu" --seed 42 > /dev/null
fi
echo "data: $(du -sh "$work/data/clickstream" | cut -f1) of clickstream CSV"
for i in $(seq "$runs"); do
  bench/peak_rss.sh "$work/ours.$i.rss" "$bin" run --data "$work/data" --out "$work/out" \
    --factors "$factors" --iterations "$iterations" > /dev/null
  cp "$work/out/summary.json" "$work/ours.$i.json"
  [ "$i" -le "$oruns" ] || continue
  if [ "$skip" != python ] && [ "$skip" != both ]; then
    OPENBLAS_NUM_THREADS=1 bench/peak_rss.sh "$work/python.$i.rss" "$venv/bin/python" bench/pipeline_python.py \
      "$work/data" "$factors" "$iterations" > "$work/python.$i.json"
  fi
  if [ "$skip" != spark ] && [ "$skip" != both ]; then
    TMPDIR="$work" bench/peak_rss.sh "$work/spark.$i.rss" "$venv/bin/python" bench/pipeline_spark.py "$work/data" \
      100 2 12g > "$work/spark.$i.json" 2> "$work/spark.$i.log"
  fi
done
python3 - "$work" "$runs" "$skip" "$oruns" <<'PY'
import json, statistics, sys
work, runs, skip, oruns = sys.argv[1], int(sys.argv[2]), sys.argv[3], min(int(sys.argv[4]), int(sys.argv[2]))
def rss(path):
    return int(open(path).read()) / 1024
def load(path):
    return json.loads(open(path).read().strip().splitlines()[-1])
R = range(1, runs + 1)
ours = [json.load(open(f"{work}/ours.{i}.json")) for i in R]
others = {name: [load(f"{work}/{name}.{i}.json") for i in range(1, oruns + 1)] for name in ["python", "spark"]
          if name != skip and skip != "both"}
print(f"{ours[0]['users']} users, {ours[0]['inputs']['plays']} plays; medians of {runs} runs of cohortcast and "
      f"{oruns} of the others (seconds); speed-up = median over rounds of (their time / ours) in the same round")
head = f"{'stage':<10} {'cohortcast':>11}" + "".join(f" {n:>9} {'speed-up':>9}" for n in others)
print(head)
for st in ["ingest", "als", "kmeans", "targeting", "total"]:
    line = f"{st:<10} {statistics.median(o['timings_s'][st] for o in ours):>11.2f}"
    for n, rs in others.items():
        line += f" {statistics.median(r['timings_s'][st] for r in rs):>9.2f}"
        line += f" {statistics.median(r['timings_s'][st] / o['timings_s'][st] for r, o in zip(rs, ours)):>8.1f}x"
    print(line)
line = f"{'peak RSS':<10} {statistics.median(rss(f'{work}/ours.{i}.rss') for i in R):>9.0f}MB"
for n in others:
    line += f" {statistics.median(rss(f'{work}/{n}.{i}.rss') for i in range(1, oruns + 1)):>7.0f}MB {'':>9}"
print(line)
pol = {r["policy"]: r for r in ours[0]["ctr"]}
def pct(x):
    return "n/a" if x is None else f"{100 * x:.2f}%"
e = pol["expected-ctr"]
print(f"cohortcast expected-ctr: CTR {pct(e['overall_ctr'])} over {e['pushes']} pushed, expected {pct(e['expected_ctr'])}; "
      f"oracle expected {pct(pol['oracle']['expected_ctr'])}")
t = pol["top-artist"]
print(f"cohortcast top-artist rule: CTR {pct(t['overall_ctr'])} over {t['pushes']} pushed, expected {pct(t['expected_ctr'])}")
if "python" in others:
    p = others["python"][0]
    print(f"python: CTR {pct(p['ctr'])} over {p['users']} pushed, expected {pct(p.get('expected_ctr'))}; pairs {p['pairs']}")
if "spark" in others:
    s = others["spark"][0]
    print(f"spark (top artist of ALS+KMeans clusters): CTR {pct(s['ctr'])} over {s['pushed']} of {s['users']} users pushed, "
          f"expected {pct(s.get('expected_ctr'))}; (user, song) pairs {s['pairs']}")
print(f"(user, artist) pairs: cohortcast {ours[0]['inputs']['user_artist_pairs']}")
PY
