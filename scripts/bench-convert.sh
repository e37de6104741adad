#!/usr/bin/env bash
# Times `qemu-img convert` against `csi-qcow2 img convert` in the same run,
# on the same files, and prints a Markdown table (median of REPS runs; the
# ratio is qemu-img time / our time, so >= 1.0 means we are no slower).
# `make bench-convert` runs it; docs/benchmarks.md shows results.
#
# The source is a 2 GiB qcow2 image (64 KiB clusters) with every other
# 1 MiB chunk allocated: half of those chunks random bytes, half base64 text
# (compresses to about 3/4), the rest unallocated. Its raw twin (a sparse
# file with the same holes) is the source of raw->qcow2.
#
# Before every timed command the page cache is dropped (sync; echo 3 >
# /proc/sys/vm/drop_caches) when that works (root, not in a container
# that forbids it); otherwise the source is read once so that both tools
# start from a warm cache. Which of the two happened is printed. The two
# tools alternate which goes first in each repetition.
#
# Both tools get `-t $CACHE` (default writeback): the output goes through
# the page cache and is flushed once at the end, so each timed run includes
# making the output durable. (qemu-img convert's own default is -t unsafe,
# which never flushes; img convert always flushes: it supports writeback
# only.)
#
# Environment:
#   REPS    repetitions per conversion and tool (default 3)
#   CACHE   -t cache mode for both tools (default writeback)
#   ROWS    which conversions to run, as indexes (default "0 1 2")
#   SIZE    virtual size of the source (default 2G; a multiple of 2 MiB)
#   GO      the go command (default go)
#   TMPDIR  where the files go (default /tmp): a real disk, about 3x SIZE free
#   KEEP=1  keep the work directory
set -euo pipefail
cd "$(dirname "$0")/.."

REPS=${REPS:-3}
CACHE=${CACHE:-writeback}
ROWS=${ROWS:-0 1 2}
SIZE=${SIZE:-2G}
GO=${GO:-go}
OURS=$PWD/bin/csi-qcow2

for tool in qemu-img qemu-io; do
	command -v "$tool" >/dev/null || { echo "$tool not found: apt-get install -y qemu-utils" >&2; exit 1; }
done
"$GO" build -o bin/csi-qcow2 ./cmd/csi-qcow2

WORK=$(mktemp -d "${TMPDIR:-/tmp}/bench-convert.XXXXXX")
cleanup() { [ "${KEEP:-}" = 1 ] || rm -rf "$WORK"; }
trap cleanup EXIT
cd "$WORK"

size_bytes=$(numfmt --from=iec "$SIZE")
chunks=$((size_bytes / (1 << 20)))
echo "building the source: $SIZE, every other 1 MiB allocated ($((chunks / 2)) chunks) in $WORK" >&2
head -c $((chunks / 4 + 1))M /dev/urandom >pool.rnd
head -c $((chunks / 4 * 3 / 4 + 1))M /dev/urandom | base64 -w 76 >pool.txt
truncate -s "$size_bytes" src.raw
for ((i = 0; i < chunks / 2; i++)); do
	if ((i % 2 == 0)); then pool=pool.rnd; else pool=pool.txt; fi
	dd if=$pool of=src.raw bs=1M count=1 skip=$((i / 2)) seek=$((2 * i)) conv=notrunc status=none
done
rm -f pool.rnd pool.txt
qemu-img convert -f raw -O qcow2 src.raw src.qcow2
sync

if (sync && echo 3 >/proc/sys/vm/drop_caches) 2>/dev/null; then
	cache_mode=dropped
	prepare() { sync; echo 3 >/proc/sys/vm/drop_caches; }
else
	cache_mode=warm
	prepare() { sync; cat "$1" >/dev/null; }
fi
echo "page cache before each run: $cache_mode" >&2

now() { date +%s.%N; }
# run SRC DST CMD...: one timed conversion; prints seconds.
run() {
	local src=$1 dst=$2
	shift 2
	rm -f "$dst"
	prepare "$src"
	local t0 t1
	t0=$(now)
	"$@" >/dev/null
	t1=$(now)
	echo "$t1 - $t0" | bc -l
}
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

declare -a names=(
	"qcow2 -> raw"
	"raw -> qcow2"
	"qcow2 -> qcow2 -c (zlib)"
)
declare -a srcs=(src.qcow2 src.raw src.qcow2)
declare -a args=(
	"-t $CACHE -f qcow2 -O raw"
	"-t $CACHE -f raw -O qcow2"
	"-t $CACHE -f qcow2 -O qcow2 -c"
)

rows=()
load0=$(cut -d' ' -f1-3 /proc/loadavg)
for k in $ROWS; do
	src=${srcs[$k]}
	# shellcheck disable=SC2206
	a=(${args[$k]})
	q=() o=()
	for ((r = 0; r < REPS; r++)); do
		if ((r % 2 == 0)); then
			q+=("$(run "$src" out.q qemu-img convert "${a[@]}" "$src" out.q)")
			o+=("$(run "$src" out.o "$OURS" img convert "${a[@]}" "$src" out.o)")
		else
			o+=("$(run "$src" out.o "$OURS" img convert "${a[@]}" "$src" out.o)")
			q+=("$(run "$src" out.q qemu-img convert "${a[@]}" "$src" out.q)")
		fi
	done
	# The outputs must read the same as the source (untimed).
	qemu-img compare -q "$src" out.q
	qemu-img compare -q "$src" out.o
	qs=$(du -k --apparent-size out.q | cut -f1) os=$(du -k --apparent-size out.o | cut -f1)
	qa=$(du -k out.q | cut -f1) oa=$(du -k out.o | cut -f1)
	mq=$(printf '%s\n' "${q[@]}" | median)
	mo=$(printf '%s\n' "${o[@]}" | median)
	fmt() { printf '%s\n' "$@" | awk '{ printf "%s%.2f", (NR > 1 ? " / " : ""), $1 }'; }
	ratio=$(echo "$mq / $mo" | bc -l)
	rows+=("$(printf '| %s | %s | %s | %.2f | %.2f | **%.2f** | %s / %s MiB |' \
		"${names[$k]}" "$(fmt "${q[@]}")" "$(fmt "${o[@]}")" "$mq" "$mo" "$ratio" \
		"$((qa / 1024))" "$((oa / 1024))")")
	echo "${names[$k]}: qemu-img ${q[*]}  ours ${o[*]}  (apparent sizes $qs / $os KiB)" >&2
	rm -f out.q out.o
done

echo
echo "Load average before the runs: $load0; after: $(cut -d' ' -f1-3 /proc/loadavg)."
echo "Source: $SIZE qcow2 (64 KiB clusters), every other 1 MiB allocated (random / base64 text); page cache $cache_mode before each run; -t $CACHE for both tools; $REPS runs each, alternating which tool goes first."
echo
echo "| Conversion | qemu-img runs (s) | ours runs (s) | qemu-img median (s) | ours median (s) | qemu/ours | output on disk (qemu-img / ours) |"
echo "|---|---|---|---:|---:|---:|---:|"
printf '%s\n' "${rows[@]}"
