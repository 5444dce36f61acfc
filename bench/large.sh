#!/usr/bin/env bash
# The full Saavn scale on this machine: `cohortcast synth` writes about 45 GB
# (700 M plays over 50 days) and `cohortcast run` does the whole job on it,
# under /usr/bin/time -v (peak RSS). The data is deleted at the end (disk is
# shared); the summary, the time output and the logs are kept in OUT.
# Usage: bench/large.sh [users] [plays-per-user] [out]   (default 2000000 350 /var/tmp/cc-large-out)
set -euo pipefail
cd "$(dirname "$0")/.."
users=${1:-2000000} ppu=${2:-350} out=${3:-/var/tmp/cc-large-out}
cargo build --release --quiet
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
bin="$target/release/cohortcast"
data=${LARGE_DATA:-/var/tmp/cc-large-data}
mkdir -p "$out"
trap 'rm -rf "$data"' EXIT
if [ ! -f "$data/truth/synth.json" ]; then
  /usr/bin/time -v "$bin" synth --out "$data" --users "$users" --plays-per-user "$ppu" --days 50 --parts 64 \
    > "$out/synth.log" 2> "$out/synth.time"
fi
du -sb "$data/clickstream" | cut -f1 > "$out/clickstream.bytes"
RUST_LOG=info /usr/bin/time -v "$bin" run --data "$data" --out "$out/run" > "$out/run.log" 2> "$out/run.time"
grep -E "Elapsed|Maximum resident" "$out/synth.time" "$out/run.time"
python3 -c "import json; s = json.load(open('$out/run/summary.json')); print(s['timings_s'], s['users'], s['inputs']['plays'], s['inputs']['user_artist_pairs'])"
