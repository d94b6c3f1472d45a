#!/bin/bash
# A/B of the crossing latency: `bench/ab_latency.sh REV_A REV_B [PAIRS] [WARM_ROUNDS]`.
#
# This machine's CPU speed drifts by 2x within seconds (docs/performance.md, "The crossing,
# third pass"): one run of each commit says little. This checks both commits out in worktrees
# under /tmp (sharing this checkout's .venv), gives both the working tree's bench/latency.py,
# and alternates A and B PAIRS times (default 3), each run WARM_ROUNDS warm crossings
# (default 6). Per run: the median warm p99, the machine's CPU per crossing, and the mean time
# of the reference loop (higher: a slower moment).
set -euo pipefail
A=$1; B=$2; N=${3:-3}; W=${4:-6}
top=$(git rev-parse --show-toplevel)
for x in A B; do
  rev=${!x}; d=/tmp/contacto-ab-$x
  git -C "$top" worktree remove --force "$d" 2>/dev/null || rm -rf "$d"
  git -C "$top" worktree add -q --detach "$d" "$rev"
  ln -s "$top/.venv" "$d/.venv"
  cp "$top/bench/latency.py" "$d/bench/latency.py"
done
for i in $(seq 1 "$N"); do
  for x in A B; do
    out=$(cd "/tmp/contacto-ab-$x" && .venv/bin/python -m bench.latency --rates 200 --seconds 2 \
      --warm-rounds "$W" 2>&1 | grep -E "warm crossings|machine")
    p99=$(echo "$out" | grep "warm crossings" | sed 's/.*median \([0-9]*\) ms.*/\1/')
    cpu=$(echo "$out" | grep -o "machine (all processes) [0-9]*" | awk '{s+=$4;n++} END {print int(s/n)}')
    ref=$(echo "$out" | grep -o "reference loop [0-9]*" | awk '{s+=$3;n++} END {print int(s/n)}')
    echo "$x (${!x}) pair $i: warm p99 median $p99 ms, machine CPU per crossing $cpu ms, reference loop $ref ms"
  done
done
for x in A B; do git -C "$top" worktree remove --force "/tmp/contacto-ab-$x"; done
