#!/usr/bin/env bash
# Runs the engine-vs-raw benchmarks of pkg/qcow2 (bench_test.go) and prints
# a Markdown table of qcow2/raw throughput ratios against the targets
# (reads and in-place writes >= 0.9x raw, allocating writes >= 0.5x raw).
# `make bench` runs it; docs/benchmarks.md shows results.
#
# Environment:
#   BENCHTIME         -benchtime per benchmark (default 2s)
#   COUNT             runs of the whole set; the table shows medians (default 3).
#                     Each run is its own `go test -count 1`, so the variants
#                     alternate (raw, qcow2, raw, qcow2, ...) instead of
#                     running as blocks: a host that drifts during the
#                     minutes a run takes then weighs on every variant alike.
#   BENCH             -bench regexp (default: the engine-vs-raw benchmarks)
#   OUT               where the raw `go test` output is kept (default bin/bench.txt)
#   QCOW2_BENCH_SIZE  disk size per benchmark (default 1G)
#   TMPDIR            where the files go: must be on a real disk, not tmpfs
set -euo pipefail
cd "$(dirname "$0")/.."

BENCHTIME=${BENCHTIME:-2s}
COUNT=${COUNT:-3}
BENCH=${BENCH:-'^Benchmark(Read|Write)$'}
OUT=${OUT:-bin/bench.txt}
GO=${GO:-go}

mkdir -p "$(dirname "$OUT")"
echo "# $COUNT x: $GO test -run '^\$' -bench '$BENCH' -benchtime $BENCHTIME -count 1 -benchmem ./pkg/qcow2/ (TMPDIR=${TMPDIR:-/tmp}, QCOW2_BENCH_SIZE=${QCOW2_BENCH_SIZE:-1G})" >&2
for run in $(seq "$COUNT"); do
	echo "# run $run/$COUNT (load: $(cut -d' ' -f1-3 /proc/loadavg))" >&2
	"$GO" test -run '^$' -bench "$BENCH" -benchtime "$BENCHTIME" -count 1 -benchmem -timeout 120m ./pkg/qcow2/
done | tee "$OUT" >&2
echo >&2
"$GO" run ./internal/tools/benchratio \
	-target 'Read/*/qcow2-*=0.9' \
	-target 'Write/*/qcow2-falloc=0.9' \
	-target 'Write/*/qcow2-sparse=0.5' \
	<"$OUT"
