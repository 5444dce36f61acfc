#!/usr/bin/env bash
# Runs a command and writes to FILE the peak of the summed RSS (kB) of the
# command and all its descendants, sampled every 0.2 s. /usr/bin/time -v
# sees only the process it started, which for pyspark leaves out the JVM.
# Usage: bench/peak_rss.sh FILE command args...
out=$1
shift
"$@" &
pid=$!
peak=0
while kill -0 "$pid" 2> /dev/null; do
  now=$(ps -e -o pid=,ppid=,rss= | awk -v root="$pid" '
    { parent[$1] = $2; rss[$1] = $3 }
    END { for (p in rss) { q = p; while (q != "" && q != 0 && q != 1) { if (q == root) { s += rss[p]; break } q = parent[q] } } print s + 0 }')
  [ "$now" -gt "$peak" ] && peak=$now
  sleep 0.2
done
wait "$pid"
rc=$?
echo "$peak" > "$out"
exit $rc
