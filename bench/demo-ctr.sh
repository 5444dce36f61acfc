#!/usr/bin/env bash
# Expected CTR of the default policy against the per-user oracle and the
# baselines on `cohortcast demo` data (50k users, 100 cohorts), over several
# seeds. Usage: bench/demo-ctr.sh [SEED...]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
bin="$target/release/cohortcast"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
seeds=("$@")
[ ${#seeds[@]} -gt 0 ] || seeds=(42 7 123)
printf '%-6s %-30s %9s %9s %9s %10s\n' seed policy CTR clicks/u exp.CTR "of oracle"
for seed in "${seeds[@]}"; do
  "$bin" demo --out "$work/$seed" --seed "$seed" > "$work/$seed.txt"
  python3 - "$seed" "$work/$seed/summary.json" <<'PY'
import json, sys
seed, path = sys.argv[1], sys.argv[2]
s = json.load(open(path))
users = s["users"]
oracle = next(r["expected_ctr"] for r in s["ctr"] if r["policy"] == "oracle")
for r in s["ctr"]:
    print(f'{seed:<6} {r["policy"]:<30} {100*r["overall_ctr"]:8.2f}% {100*r["clicks"]/users:8.2f}% '
          f'{100*r["expected_ctr"]:8.2f}% {100*r["expected_ctr"]/oracle:9.1f}%')
t = s["timings_s"]
print(f'{seed:<6} timings (s): ingest {t["ingest"]:.1f} als {t["als"]:.1f} kmeans {t["kmeans"]:.1f} '
      f'targeting {t["targeting"]:.2f} evaluation {t["evaluation"]:.2f} total {t["total"]:.1f}')
PY
done
