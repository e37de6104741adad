#!/usr/bin/env bash
# Benchmarks the NBD server (`csi-qcow2 img serve`) against qemu-nbd and
# nbdkit's file plugin (raw only: nbdkit has no qcow2 plugin) with fio's
# nbd engine over a unix socket, on the same images, in one run:
#
#   - a qcow2 overlay (64 KiB clusters) on a qcow2 base: the base holds 1 GiB
#     of random data, the overlay rewrites the first half; every server run
#     starts from a fresh copy of that overlay;
#   - a raw image of 1 GiB of random data.
#
# Workloads (each RUNTIME seconds, in this order on one server process):
# 4K randread at iodepth 1 and 32, 1M sequential read at iodepth 1 and 8,
# 4K randwrite at iodepth 1 and 32, 1M sequential write at iodepth 1 and 8
# (issue 15's rows are 4K randread QD1 and QD32, 4K randwrite QD32, 1M read
# and 1M write QD8). The servers use the host page cache
# (qemu-nbd --cache=writeback --aio=threads; ours always writes through the
# page cache, no O_DIRECT) and neither flushes during the run (fio sends no
# FLUSH unless asked). Ours runs with its defaults, the write journal
# included: copy-on-write mappings wait in IMAGE.journal until a FLUSH,
# where qemu-nbd keeps them in its in-memory L2 cache (lost on a kill).
# nbdkit runs with its defaults too (file plugin, 16 threads, page cache).
# The server/image pairs run in alternating order,
# REPEAT times; tables show medians. Once a server has opened its image,
# the image is read through once (cat, outside the server) so that every
# server starts with it in the page cache: our engine drops the clean
# pages of an image it opens writable (docs/engine.md), and a fresh
# overlay copy would otherwise be read from the disk by ours only.
#
# Prints two Markdown tables (internal/tools/benchratio): ours / qemu-nbd on
# the same image (target 1.0), and qcow2 through ours / raw through
# qemu-nbd (target 0.85). `make bench-nbd` runs it; docs/benchmarks.md has
# results.
#
# The CPU tables give the servers' CPU time per I/O (user+system of the
# server process while fio ran, from /proc, divided by the requests fio
# completed): on a shared, noisy machine it is steadier than throughput.
# The last table has it in microseconds for every server and image side by
# side (issue 15's acceptance 3).
#
# Environment: RUNTIME (default 3), REPEAT (default 5), SIZE (default 1G),
# TMPDIR (a real disk, not tmpfs), OUT (default bin/bench-nbd.txt),
# WORKLOADS (an extended regexp: only the workloads whose name matches,
# e.g. 'write'), FORMATS (default "qcow2 raw"; "qcow2" for the overlay only).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNTIME=${RUNTIME:-3}
REPEAT=${REPEAT:-5}
SIZE=${SIZE:-1G}
OUT=${OUT:-bin/bench-nbd.txt}
GO=${GO:-go}
WORKLOADS=${WORKLOADS:-.}
FORMATS=${FORMATS:-qcow2 raw}

for tool in fio qemu-nbd qemu-img qemu-io nbdkit; do
	command -v "$tool" >/dev/null || { echo "bench-nbd: $tool missing (scripts/install-test-tools.sh installs it)" >&2; exit 2; }
done
mkdir -p bin "$(dirname "$OUT")"
"$GO" build -o bin/csi-qcow2 ./cmd/csi-qcow2

work=$(mktemp -d "${TMPDIR:-/tmp}/bench-nbd.XXXXXX")
server_pid=""
cleanup() {
	if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
	rm -rf "$work"
}
trap cleanup EXIT

echo "# preparing images in $work (SIZE=$SIZE)" >&2
bytes=$(qemu-img create -f raw "$work/probe" "$SIZE" | sed -n 's/.*size=\([0-9]*\).*/\1/p'); rm -f "$work/probe"
head -c "$bytes" /dev/urandom >"$work/disk.raw"
qemu-img convert -f raw -O qcow2 "$work/disk.raw" "$work/base.qcow2"
qemu-img create -q -f qcow2 -F qcow2 -b "$work/base.qcow2" "$work/overlay.master"
qemu-io -f qcow2 -c "write -P 0x5a 0 $((bytes / 2))" "$work/overlay.master" >/dev/null

sock="$work/nbd.sock"
uri="nbd+unix:///?socket=$sock"

# start_server WHO FORMAT: serves a fresh overlay copy (qcow2) or the raw image.
start_server() {
	local who=$1 fmt=$2 image
	rm -f "$sock"
	if [ "$fmt" = qcow2 ]; then
		cp --sparse=always "$work/overlay.master" "$work/overlay.qcow2"
		image="$work/overlay.qcow2"
	else
		image="$work/disk.raw"
	fi
	case $who in
	ours) bin/csi-qcow2 img serve -f "$fmt" --socket "$sock" "$image" & ;;
	qemu) qemu-nbd -f "$fmt" --cache=writeback --aio=threads --persistent --shared=0 --socket="$sock" "$image" & ;;
	nbdkit) nbdkit --foreground --unix "$sock" file "$image" & ;;
	esac
	server_pid=$!
	for _ in $(seq 100); do
		if [ -S "$sock" ]; then
			cat "$image" "$work/base.qcow2" >/dev/null
			return 0
		fi
		sleep 0.05
	done
	echo "bench-nbd: $who did not create its socket" >&2
	exit 1
}

stop_server() {
	kill "$server_pid"
	wait "$server_pid" 2>/dev/null || true
	server_pid=""
}

# workload NAME RW BS IODEPTH [FSYNC]: FSYNC > 0 makes fio send a FLUSH
# after every FSYNC writes; those rows are named NBD-flush/..., outside the
# issue's targets, to show what a guest that flushes gets.
workloads=(
	"4K-randread-qd1 randread 4k 1"
	"4K-randread-qd32 randread 4k 32"
	"1M-seqread-qd1 read 1m 1"
	"1M-seqread-qd8 read 1m 8"
	"4K-randwrite-qd1 randwrite 4k 1"
	"4K-randwrite-qd32 randwrite 4k 32"
	"1M-seqwrite-qd1 write 1m 1"
	"1M-seqwrite-qd8 write 1m 8"
	"4K-randwrite-flush64-qd1 randwrite 4k 1 64"
)

# cpu_ticks: user+system CPU time of the server process, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$server_pid/stat"; }
hz=$(getconf CLK_TCK)

# run_fio NAME RW BS DEPTH FSYNC VARIANT: appends a go-bench-style
# throughput line to $OUT and a line with the server's CPU time per I/O to
# $OUT.cpu.
run_fio() {
	local name=$1 rw=$2 bs=$3 depth=$4 fsync=$5 variant=$6 line bw iops t0 t1 group=NBD
	[ "$fsync" -gt 0 ] && group=NBD-flush
	t0=$(cpu_ticks)
	line=$(fio --name=bench --ioengine=nbd --uri="$uri" --rw="$rw" --bs="$bs" --iodepth="$depth" \
		--fsync="$fsync" --size="$bytes" --runtime="$RUNTIME" --time_based --randrepeat=0 \
		--output-format=terse --terse-version=3 | tail -n 1)
	t1=$(cpu_ticks)
	# terse v3: read KiB, KiB/s, IOPS in fields 6-8, write in 47-49.
	case $rw in
	*read) kib=$(echo "$line" | cut -d';' -f6) bw=$(echo "$line" | cut -d';' -f7) iops=$(echo "$line" | cut -d';' -f8) ;;
	*) kib=$(echo "$line" | cut -d';' -f47) bw=$(echo "$line" | cut -d';' -f48) iops=$(echo "$line" | cut -d';' -f49) ;;
	esac
	awk -v n="$group/$name/$variant" -v bw="$bw" -v iops="$iops" \
		'BEGIN { printf "Benchmark%s 1 %.0f ns/op %.2f MB/s\n", n, 1e9 / iops, bw * 1024 / 1e6 }' | tee -a "$OUT" >&2
	# Requests: the KiB fio moved over the block size (4k or 1m).
	awk -v n="CPU-$group/$name/$variant" -v t=$((t1 - t0)) -v hz="$hz" -v kib="$kib" -v bs="$bs" \
		'BEGIN { b = bs + 0; if (bs ~ /m$/) b *= 1024; printf "Benchmark%s 1 %.0f ns/op\n", n, t / hz * 1e9 / (kib / b) }' >>"$OUT.cpu"
}

configs=()
for fmt in $FORMATS; do configs+=("ours $fmt" "qemu $fmt"); done
[[ " $FORMATS " == *" raw "* ]] && configs+=("nbdkit raw")
: >"$OUT"
: >"$OUT.cpu"
for r in $(seq "$REPEAT"); do
	order=("${configs[@]}")
	if [ $((r % 2)) -eq 0 ]; then
		order=()
		for ((i = ${#configs[@]} - 1; i >= 0; i--)); do order+=("${configs[i]}"); done
	fi
	for cfg in "${order[@]}"; do
		read -r who fmt <<<"$cfg"
		echo "# run $r/$REPEAT: $who $fmt (load: $(cut -d' ' -f1-3 /proc/loadavg))" >&2
		start_server "$who" "$fmt"
		for w in "${workloads[@]}"; do
			read -r name rw bs depth fsync <<<"$w"
			[[ $name =~ $WORKLOADS ]] || continue
			run_fio "$name" "$rw" "$bs" "$depth" "${fsync:-0}" "$who-$fmt"
		done
		stop_server
	done
done

echo "# done (load: $(cut -d' ' -f1-3 /proc/loadavg)); RUNTIME=$RUNTIME REPEAT=$REPEAT SIZE=$SIZE" >&2
echo "## Ours / qemu-nbd on the same image (target 1.0)"
grep -v -- '/nbdkit-' "$OUT" | "$GO" run ./internal/tools/benchratio -base qemu -target 'NBD/*/ours-*=1.0'
if [[ " $FORMATS " == *" raw "* ]]; then
	echo
	echo "## Ours on raw / nbdkit on raw (target 1.0)"
	grep -E '^BenchmarkNBD/.*/(ours|nbdkit)-raw ' "$OUT" | "$GO" run ./internal/tools/benchratio -base nbdkit -target 'NBD/*/ours-raw=1.0'
fi
if [[ " $FORMATS " == *" qcow2 "* && " $FORMATS " == *" raw "* ]]; then
	echo
	echo "## qcow2 through ours / raw through qemu-nbd (target 0.85)"
	grep -E '^BenchmarkNBD/.*/(ours-qcow2|qemu-raw) ' "$OUT" | sed 's#/qemu-raw #/raw #' |
		"$GO" run ./internal/tools/benchratio -base raw -target 'NBD/*/ours-qcow2=0.85'
	echo
	echo "## qcow2 through ours / raw through nbdkit (target 0.9)"
	grep -E '^BenchmarkNBD/.*/(ours-qcow2|nbdkit-raw) ' "$OUT" | sed 's#/nbdkit-raw #/raw #' |
		"$GO" run ./internal/tools/benchratio -base raw -target 'NBD/*/ours-qcow2=0.9'
fi
echo
echo "## Server CPU time per I/O, as a ratio qemu-nbd / ours (above 1: ours uses less CPU)"
grep -v -- '/nbdkit-' "$OUT.cpu" | "$GO" run ./internal/tools/benchratio -base qemu
if [[ " $FORMATS " == *" raw "* ]]; then
	echo
	echo "## Server CPU time per I/O on raw, as a ratio nbdkit / ours (above 1: ours uses less CPU)"
	grep -E '/(ours|nbdkit)-raw ' "$OUT.cpu" | "$GO" run ./internal/tools/benchratio -base nbdkit
fi
echo
echo "## Server CPU time per I/O, µs of user+system per request (median of $REPEAT; lower is better)"
echo
# cpu_table: one row per workload, one column per server and image.
sed -n 's/^BenchmarkCPU-\(NBD[^/]*\/[^/]*\)\/\([^ ]*\) 1 \([0-9]*\) ns\/op$/\1 \2 \3/p' "$OUT.cpu" |
	sort -k1,1 -k2,2 -k3,3n |
	awk -v order="$(for w in "${workloads[@]}"; do read -r n _ <<<"$w"; echo "$n"; done | tr '\n' ' ')" '
	{ k = $1 SUBSEP $2; v[k, ++n[k]] = $3; seen[$2] = 1 }
	END {
		split("ours-raw ours-qcow2 nbdkit-raw qemu-raw qemu-qcow2", cols, " ")
		hdr = "| workload |"; sep = "|---|"
		for (i = 1; i in cols; i++) if (cols[i] in seen) { hdr = hdr " " cols[i] " |"; sep = sep "---:|" }
		print hdr; print sep
		nw = split(order, ws, " ")
		for (g = 1; g <= 2; g++) for (w = 1; w <= nw; w++) {
			row = (g == 1 ? "NBD/" : "NBD-flush/") ws[w]; line = "| " row " |"; any = 0
			for (i = 1; i in cols; i++) {
				if (!(cols[i] in seen)) continue
				k = row SUBSEP cols[i]; m = n[k]
				if (m == 0) { line = line " |"; continue }
				med = (m % 2) ? v[k, (m + 1) / 2] : (v[k, m / 2] + v[k, m / 2 + 1]) / 2
				line = line sprintf(" %.1f |", med / 1000); any = 1
			}
			if (any) print line
		}
	}'
