#!/usr/bin/env bash
# Runs the tests N times and lists every test that failed, with its run
# number: a test that fails in some runs only is a flaky test, a defect.
#
#   scripts/test-repeat.sh [-n N] [--hog] [-- GO TEST ARGS...]
#
# With no GO TEST ARGS each run is `make test`; with them, `go test -count=1
# ARGS...` (e.g. `-- -run TestGuest ./test/e2e/vm/`). --hog keeps every
# core busy with a CPU hog (one spinning process per core, at the tests'
# own priority) for the whole time, as a loaded CI machine would. Each
# run's output is kept in a directory printed at the start; the summary
# gives each run's time and result. Exits 1 if any run failed.
# `make test-repeat N=5 HOG=1` calls this.
set -uo pipefail
cd "$(dirname "$0")/.."

runs=5
hog=0
while [ $# -gt 0 ]; do
	case $1 in
	-n) runs=$2; shift 2 ;;
	--hog) hog=1; shift ;;
	--) shift; break ;;
	-h | --help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "test-repeat: unknown argument $1 (see --help)" >&2; exit 2 ;;
	esac
done
case $runs in
'' | *[!0-9]* | 0) echo "test-repeat: -n needs a positive count, not '$runs'" >&2; exit 2 ;;
esac

logs=$(mktemp -d /tmp/test-repeat.XXXXXX)
echo "test-repeat: $runs runs$([ "$hog" = 1 ] && echo ", $(nproc) cores kept busy"), logs in $logs"

hogs=()
stop_hogs() {
	[ "${#hogs[@]}" -eq 0 ] || kill "${hogs[@]}" 2>/dev/null
	wait "${hogs[@]}" 2>/dev/null
	hogs=()
}
trap stop_hogs EXIT
if [ "$hog" = 1 ]; then
	for _ in $(seq "$(nproc)"); do
		(while :; do :; done) &
		hogs+=($!)
	done
fi

failed_runs=0
summary=()
for i in $(seq "$runs"); do
	log=$logs/run-$i.log
	start=$(date +%s)
	if [ $# -eq 0 ]; then
		make test >"$log" 2>&1
	else
		go test -count=1 "$@" >"$log" 2>&1
	fi
	rc=$?
	secs=$(($(date +%s) - start))
	if [ "$rc" -eq 0 ]; then
		result=pass
	else
		result="FAIL (exit $rc)"
		failed_runs=$((failed_runs + 1))
	fi
	summary+=("run $i: $result in ${secs}s")
	echo "run $i: $result in ${secs}s"
	# Every failed test and package, and what a guest test printed on failure.
	grep -E '^\s*--- FAIL: |^FAIL\s|panic:|@@vm: FAIL' "$log" | sed "s/^/  run $i: /"
done

echo
echo "test-repeat summary ($runs runs$([ "$hog" = 1 ] && echo ", under a CPU hog")):"
printf '  %s\n' "${summary[@]}"
echo "$((runs - failed_runs)) passed, $failed_runs failed"
[ "$failed_runs" -eq 0 ]
