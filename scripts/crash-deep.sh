#!/usr/bin/env bash
# A deep crash-state run: the crash suites of pkg/qcow2 (every
# configuration of TestCrashStates and TestCrashStatesJournal) over ROUNDS
# workloads, each with its own seed, as many states per configuration as
# each workload yields (up to STATES). Prints each round's totals and the
# sum; exits 1 if any state failed (the failing seed is in the output).
#
#   ROUNDS=8 STATES=3000 scripts/crash-deep.sh     (make crash-deep)
set -uo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-8}
states=${STATES:-3000}
first=${SEED:-$(date +%s)}
tests=${TESTS:-'TestCrashStates$|TestCrashStatesJournal$'}
log=$(mktemp /tmp/crash-deep.XXXXXX)
echo "crash-deep: $rounds rounds from seed $first, up to $states states a configuration; log $log"
total=0
failed=0
start=$(date +%s)
for r in $(seq 0 $((rounds - 1))); do
	seed=$((first + r))
	out=$(QCOW2_CRASH_SEED=$seed QCOW2_CRASH_STATES=$states go test -count=1 -v -timeout 3h -run "$tests" ./pkg/qcow2/ 2>&1)
	rc=$?
	echo "$out" >>"$log"
	n=$(echo "$out" | awk '/crash_test.go:[0-9]+: [0-9]+ crash states/ { for (i = 1; i < NF; i++) if ($(i + 1) == "crash") s += $i } END { print s + 0 }')
	total=$((total + ${n:-0}))
	echo "round $((r + 1)) (seed $seed): ${n:-0} states, exit $rc"
	if [ "$rc" -ne 0 ]; then
		failed=$((failed + 1))
		echo "$out" | grep -E -- '--- FAIL|crash states failed|reproduce:' | head -20
	fi
done
echo "crash-deep: $total states in $(($(date +%s) - start)) s, $failed of $rounds rounds failed"
[ "$failed" -eq 0 ]
