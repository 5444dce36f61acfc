#!/usr/bin/env bash
# Our ALS and k-means iteration times at two commits of cohortcast-core,
# alternating, on the matrices of bench/kernels.sh (no Python side).
# Usage: bench/kernels_ab.sh BASE_REV [pairs]     (default 5 pairs)
# Each side is a throwaway crate that depends on that commit's
# cohortcast-core alone, so a side builds in about a minute.
set -euo pipefail
cd "$(dirname "$0")/.."
base=$1 pairs=${2:-5}
work=${KERNELS_AB_WORK:-$(mktemp -d)}
git worktree add -f -q "$work/base-tree" "$base"
trap 'git worktree remove --force "$work/base-tree"' EXIT
for side in base head; do
  core=$([ $side = base ] && echo "$work/base-tree/crates/cohortcast-core" || echo "$PWD/crates/cohortcast-core")
  mkdir -p "$work/$side/src"
  cat > "$work/$side/Cargo.toml" <<TOML
[package]
name = "kernels-$side"
version = "0.1.0"
edition = "2021"

[dependencies]
cohortcast-core = { path = "$core" }

[profile.release]
debug = 0

[workspace]
TOML
  # examples/kernels.rs without the .npy files it writes for Python.
  python3 - "$work/$side/src/main.rs" <<'PY'
import sys
s = open("examples/kernels.rs").read()
s = s.replace("use cohortcast_data::files::{write_npy_f32, write_npy_u32};\n", "")
a, b = s.index("    std::fs::create_dir_all(out).unwrap();"), s.index("    // ALS: per-iteration wall time")
s = s[:a] + s[b:]
s = s.replace('    write_npy_f32(&out.join("factors.npy"), x, users, f).unwrap();\n', "")
s = s.replace("    let out = Path::new(&args[1]);\n", "    let _out = Path::new(&args[1]);\n")
open(sys.argv[1], "w").write(s)
PY
  (cd "$work/$side" && cargo build --release --quiet 2>/dev/null)
done
for i in $(seq 1 "$pairs"); do
  for side in base head; do
    "$work/$side/target/release/kernels-$side" "$work" | python3 -c '
import json, sys
side, i = sys.argv[1], sys.argv[2]
for line in sys.stdin:
    r = json.loads(line)
    name = "als" if r["kernel"] == "als" else "kmeans-k%d" % r["k"]
    print(side, i, name, r["seconds_per_iteration"])
' "$side" "$i"
  done
done
