# Helpers for the guest test scripts (sourced; scripts run under sh -e).

fail() {
	echo "FAIL: $*"
	exit 1
}

# wait_for SECONDS CMD...: runs CMD every 0.1 s until it succeeds.
wait_for() {
	local n=$(($1 * 10))
	shift
	until "$@" >/dev/null 2>&1; do
		n=$((n - 1))
		[ "$n" -gt 0 ] || return 1
		sleep 0.1
	done
}

# device_of ID: prints the /dev/nbdN whose sysfs backend is ID.
device_of() {
	local b d
	for b in /sys/block/nbd*/backend; do
		[ -f "$b" ] || continue
		if [ "$(cat "$b")" = "$1" ]; then
			d=${b%/backend}
			echo "/dev/${d##*/}"
			return 0
		fi
	done
	return 1
}

# attach IMAGE ID [ARGS...]: starts "img attach" in the background and
# waits for its device; sets SERVER_PID and DEV.
attach() {
	local img=$1 id=$2
	shift 2
	csi-qcow2 img attach "$img" --id "$id" "$@" >"attach-$id.out" 2>>"attach-$id.log" &
	SERVER_PID=$!
	if ! wait_for 30 grep -q /dev/nbd "attach-$id.out"; then
		cat "attach-$id.log"
		fail "attach $img: no device after 30 s"
	fi
	DEV=$(cat "attach-$id.out")
	[ "$(device_of "$id")" = "$DEV" ] || fail "sysfs backend of $DEV is not $id"
	echo "attached $img as $DEV (server $SERVER_PID)"
}

# detach: detaches DEV and checks that its server exits cleanly.
detach() {
	csi-qcow2 img detach "$DEV"
	if ! wait "$SERVER_PID"; then
		cat "attach-$ID.log" 2>/dev/null
		fail "server of $DEV exited with an error"
	fi
	! device_of "$ID" >/dev/null || fail "$DEV still carries backend $ID after detach"
}

# allocated FILE: bytes the file occupies (st_blocks * 512).
allocated() {
	echo $(($(stat -c %b "$1") * 512))
}
