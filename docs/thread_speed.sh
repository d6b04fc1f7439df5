#!/usr/bin/env bash
# How sample.py's speed depends on --threads when another process wants a core.
#
#     bash docs/thread_speed.sh                      240 frames, 3 runs per cell (a few minutes)
#     FRAMES=12 RUNS=1 bash docs/thread_speed.sh     a quick check that the script works
#
# Times `python sample.py --frames $FRAMES --threads T` for T = 1 and 2, first on an idle machine,
# then with one core kept busy by a spinning python, and prints a markdown table of the medians:
# wall seconds (start-up and model loading included) and frames/s (sampling only, as sample.py
# reports it). Run it on an otherwise quiet machine: other work changes both columns.
set -euo pipefail
shopt -s inherit_errexit       # a failed run inside $(measure ...) stops the script too
if [[ $# -gt 0 ]]; then          # no arguments: --help (or anything) prints the usage above
    sed -n "2,10p" "$0" | sed "s/^# \{0,1\}//"
    exit $([[ $1 == -h || $1 == --help ]] && echo 0 || echo 2)
fi
cd "$(dirname "$0")/.."

FRAMES=${FRAMES:-240}
RUNS=${RUNS:-3}
PYTHON=${PYTHON:-python}
work=$(mktemp -d)
busy=""

cleanup() {
    if [ -n "$busy" ]; then kill "$busy" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

median() {  # the median of the numbers on stdin, one a line
    sort -g | awk '{ x[NR] = $1 } END { print (NR % 2) ? x[(NR + 1) / 2] : (x[NR / 2] + x[NR / 2 + 1]) / 2 }'
}

measure() {  # $1 threads -> "median wall seconds | median frames/s"
    : > "$work/seconds"
    : > "$work/speed"
    for _ in $(seq "$RUNS"); do
        start=$(date +%s.%N)
        "$PYTHON" sample.py --frames "$FRAMES" --out "$work/x.mp4" --threads "$1" > "$work/log" 2> "$work/err" ||
            { tail -c 2000 "$work/err" >&2; exit 1; }
        end=$(date +%s.%N)
        awk -v a="$start" -v b="$end" 'BEGIN { print b - a }' >> "$work/seconds"
        # sample.py's last words: "... made in S s (F frames/s, faster than real time)"
        sed -n 's/.*(\([0-9.]*\) frames\/s.*/\1/p' "$work/log" >> "$work/speed"
    done
    printf '%.1f | %.1f' "$(median < "$work/seconds")" "$(median < "$work/speed")"
}

declare -A cell
for threads in 1 2; do cell[idle,$threads]=$(measure "$threads"); done
"$PYTHON" -c "while True: pass" &
busy=$!
for threads in 1 2; do cell[busy,$threads]=$(measure "$threads"); done

echo "$FRAMES frames, median of $RUNS runs, $(nproc) cores"
echo
echo "| --threads | idle: s | idle: frames/s | one core busy: s | one core busy: frames/s |"
echo "|--:|--:|--:|--:|--:|"
for threads in 1 2; do
    echo "| $threads | ${cell[idle,$threads]} | ${cell[busy,$threads]} |"
done
