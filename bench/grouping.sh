#!/usr/bin/env bash
# Push groupings against the per-user oracle on generated data: the share of
# the oracle's expected CTR that release groups, taste cohorts and per-user
# pushes reach with every user pushed, and at reach 25% (each policy's
# best-scored quarter against the oracle's best quarter). Two layouts: the
# demo's (50k users, 200 notifications, more than the 100 groups allowed)
# and a small batch (20k users, 25 notifications, fewer than the groups).
# Usage: bench/grouping.sh [SEED...]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
bin="$target/release/cohortcast"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
seeds=("$@")
[ ${#seeds[@]} -gt 0 ] || seeds=(42 7 123)
report() {
  python3 - "$@" <<'PY'
import json, sys
layout, seed, path = sys.argv[1], sys.argv[2], sys.argv[3]
s = json.load(open(path))
ctr = {r["policy"]: r for r in s["ctr"]}
oracle = ctr["oracle"]["expected_ctr"]
def at(p, share):
    return next((q for q in ctr[p]["at_reach"] if abs(q["reach"] - share) < 1e-3), None)
o25 = at("oracle", 0.25)["expected_ctr"]
for p in ["expected-ctr", "expected-ctr:taste", "expected-ctr:user", "top-artist", "best-single", "random"]:
    r = ctr[p]
    q = at(p, 0.25)
    reach = r["pushes"] / s["users"]
    print(f'{layout:<8} {seed:<5} {p:<20} {100*r["expected_ctr"]/oracle:7.1f}% {reach:6.2f} '
          f'{100*q["expected_ctr"]/o25 if q else float("nan"):9.1f}%')
print(f'{layout:<8} {seed:<5} groups {len(open(path.replace("summary.json", "groups.csv")).readlines()) - 1}, '
      f'targeting {s["timings_s"]["targeting"]:.2f} s, evaluation {s["timings_s"]["evaluation"]:.2f} s')
PY
}
printf '%-8s %-5s %-20s %8s %6s %10s\n' layout seed policy "of orc." reach "25% of o."
for seed in "${seeds[@]}"; do
  "$bin" demo --out "$work/demo-$seed" --seed "$seed" > /dev/null 2>&1
  report demo "$seed" "$work/demo-$seed/summary.json"
  "$bin" synth --out "$work/small-$seed/data" --users 20000 --notifications 25 --seed "$seed" > /dev/null 2>&1
  "$bin" run --data "$work/small-$seed/data" --out "$work/small-$seed" --seed "$seed" > /dev/null 2>&1
  report small "$seed" "$work/small-$seed/summary.json"
done
