#!/usr/bin/env bash
# Benchmarks the block device a staged volume gets on this node's attach
# path (the driver's FUSE file under a direct-I/O loop device where the
# kernel has no nbd.ko) against a loop device with direct I/O over a raw
# file on the same filesystem, with fio (libaio, O_DIRECT): 4K random read
# and write at iodepth 1 and 32, 1M sequential read and write at iodepth 8,
# over 1 GiB of random data. The two devices alternate row by row, and
# -count REPEAT repeats every row; the table shows medians
# (BenchmarkAttach in pkg/driver; internal/tools/benchratio). Needs root,
# /dev/fuse and fio (scripts/install-test-tools.sh installs it).
#
# Environment: ATTACH_RUNTIME (seconds per fio run, default 3), REPEAT
# (default 3), OUT (default bin/bench-attach.txt).
set -euo pipefail
cd "$(dirname "$0")/.."

GO=${GO:-go}
REPEAT=${REPEAT:-3}
OUT=${OUT:-bin/bench-attach.txt}
export ATTACH_RUNTIME=${ATTACH_RUNTIME:-3}
command -v fio >/dev/null || { echo "bench-attach: fio missing (scripts/install-test-tools.sh installs it)" >&2; exit 2; }
mkdir -p "$(dirname "$OUT")"

echo "# BenchmarkAttach, REPEAT=$REPEAT ATTACH_RUNTIME=$ATTACH_RUNTIME (load: $(cut -d' ' -f1-3 /proc/loadavg))" >&2
"$GO" test -run '^$' -bench '^BenchmarkAttach$' -benchtime 1x -count "$REPEAT" -timeout 60m ./pkg/driver/ 2>/dev/null |
	grep '^Benchmark' | tee "$OUT" >&2
echo "# done (load: $(cut -d' ' -f1-3 /proc/loadavg))" >&2
echo "## The attach path's block device / a direct-I/O loop device on a raw file (target 0.5)"
"$GO" run ./internal/tools/benchratio -base raw -target 'Attach/*/attach=0.5' <"$OUT"
