#!/usr/bin/env bash
# Load test of `cohortcast serve` with wrk (Debian's `wrk`): requests per
# second and latency percentiles for GET /v1/users/{id}, POST
# /v1/releases and POST /v1/users/{id}/plays, on a model of USERS users that this script generates and
# trains first. Everything runs on this machine: wrk and the server share
# its cores, which the figures include.
#
# Usage: bench/load.sh [users] [seconds] [connections]   (default 500000 20 64)
# LOAD_KEEP=1 keeps the generated data and model (in $LOAD_WORK or a
# temporary folder under /var/tmp); otherwise they are deleted. LOAD_BIN
# serves with another binary (to compare two builds on one model).
set -euo pipefail
cd "$(dirname "$0")/.."
users=${1:-500000} secs=${2:-20} conns=${3:-64}
command -v wrk >/dev/null || { echo "needs wrk: apt-get install wrk" >&2; exit 2; }
work=${LOAD_WORK:-$(mktemp -d /var/tmp/cc-load.XXXXXX)}
server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  [ "${LOAD_KEEP:-0}" = 1 ] || rm -rf "$work"
}
trap cleanup EXIT

if [ -n "${LOAD_BIN:-}" ]; then
  bin=$LOAD_BIN
else
  cargo build --release --quiet --bin cohortcast
  bin=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/cohortcast
fi

if [ ! -f "$work/out/model/params.json" ]; then
  "$bin" synth --out "$work/data" --users "$users" --plays-per-user 60 --seed 11 >/dev/null
  "$bin" run --data "$work/data" --out "$work/out" >/dev/null
fi

export TOKEN=load-test-token-0123456789
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
COHORTCAST_TOKEN=$TOKEN "$bin" serve --model "$work/out/model" --addr "127.0.0.1:$port" 2>"$work/serve.log" &
server_pid=$!
for _ in $(seq 600); do grep -q "serving on" "$work/serve.log" 2>/dev/null && break; sleep 0.1; done
grep -q "serving on" "$work/serve.log" || { cat "$work/serve.log" >&2; exit 1; }
url="http://127.0.0.1:$port"

# 20 000 user ids spread over the model, asked for in turn.
awk -F, 'NR > 1 && NR % 25 == 0' "$work/out/cohorts.csv" | cut -d, -f1 | head -20000 >"$work/ids.txt"
export IDS="$work/ids.txt"
cat >"$work/users.lua" <<'LUA'
local ids = {}
for line in io.lines(os.getenv("IDS")) do ids[#ids + 1] = line end
local i = math.random(#ids)
request = function()
  i = i % #ids + 1
  return wrk.format("GET", "/v1/users/" .. ids[i])
end
LUA
# A release naming the first notification's artists.
artists=$(awk -F, 'NR == 1 { n = $1 } $1 == n { printf "%s\"%s\"", (c++ ? "," : ""), $2 }' "$work/data/notification_actor/part-00000.csv")
export BODY="{\"notification_id\": \"load-test\", \"artist_ids\": [$artists]}"
cat >"$work/release.lua" <<'LUA'
wrk.method = "POST"
wrk.body = os.getenv("BODY")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")
LUA

# One release at a time first: the decision's own latency.
curl -sf -o /dev/null -X POST "$url/v1/releases" -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' -d "$BODY"
for _ in $(seq 30); do
  curl -sf -o /dev/null -w '%{time_total}\n' -X POST "$url/v1/releases" \
    -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' -d "$BODY"
done | sort -n | awk '{ t[NR] = $1 } END { printf "release, one at a time (30): p50 %.1f ms, max %.1f ms\n", 1000 * t[int(NR / 2)], 1000 * t[NR] }'

echo "== GET /v1/users/{id}: $conns connections, ${secs}s"
wrk -t2 -c"$conns" -d"${secs}s" --latency -s "$work/users.lua" "$url" | tee "$work/users.txt"
echo "== POST /v1/releases: 4 connections, ${secs}s"
wrk -t1 -c4 -d"${secs}s" --latency -s "$work/release.lua" "$url/v1/releases" | tee "$work/releases.txt"
# New plays of known users (the fold-in and reassignment): 20 plays of
# songs from the metadata for each user id in turn.
head -200 "$work/data/metadata/part-00000.csv" | cut -d, -f1 | sort -u | head -50 >"$work/songs.txt"
export SONGS="$work/songs.txt"
cat >"$work/plays.lua" <<'LUA'
local ids, songs = {}, {}
for line in io.lines(os.getenv("IDS")) do ids[#ids + 1] = line end
for line in io.lines(os.getenv("SONGS")) do songs[#songs + 1] = line end
local i = math.random(#ids)
request = function()
  i = i % #ids + 1
  local plays = {}
  for k = 1, 20 do
    plays[k] = string.format('{"song_id": "%s", "timestamp": %d}', songs[(i + k) % #songs + 1], 1485000000 + 3600 * k)
  end
  return wrk.format("POST", "/v1/users/" .. ids[i] .. "/plays",
    { ["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. os.getenv("TOKEN") },
    '{"plays": [' .. table.concat(plays, ",") .. ']}')
end
LUA
echo "== POST /v1/users/{id}/plays (20 plays each): 16 connections, ${secs}s"
wrk -t2 -c16 -d"${secs}s" --latency -s "$work/plays.lua" "$url" | tee "$work/plays.txt"
grep -q 'Non-2xx' "$work/users.txt" "$work/releases.txt" "$work/plays.txt" && { echo "some requests failed" >&2; exit 1; }
echo "model: $(python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(s["users"], "users,", s["cohorts"], "cohorts")' "$work/out/summary.json")"
