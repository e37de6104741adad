# Re-adoption decides by the backend lock every server holds, not by the
# pid the kernel recorded, and compares the device's size with the image's.
#  1. The server is killed and its recorded pid handed to another process
#     (ns_last_pid): "img list" shows the device unserved, and a new "img
#     attach" re-adopts it (it used to refuse: "served by the live process").
#  2. The re-adopter serves while the recorded pid is dead: a second server
#     of the same identifier is refused (it used to re-adopt).
#  3. With the server dead, an image shrunk below the device is refused; an
#     image grown past it is re-adopted and grows the device: the kernel
#     reports the new size and data goes past the old end.
. /lib/vmtest.sh
ID=vol-readopt
ATTACH_ARGS="--dead-conn-timeout 600s"
csi-qcow2 img create -f qcow2 disk.qcow2 16M >/dev/null
attach disk.qcow2 "$ID" $ATTACH_ARGS
sys=/sys/block/${DEV#/dev/}
recorded=$(cat "$sys/pid")
# The kernel records the thread that sent CONNECT, one of the server's.
tgid=$(sed -n 's/^Tgid:[[:space:]]*//p' "/proc/$recorded/status")
[ "$tgid" = "$SERVER_PID" ] || fail "recorded pid $recorded belongs to $tgid, not to the server $SERVER_PID"
echo "the kernel recorded pid $recorded, a thread of the server $SERVER_PID"
dd if=/dev/urandom of=data bs=1M count=1 2>/dev/null
dd if=data of="$DEV" bs=1M oflag=direct conv=fsync 2>/dev/null || fail "write failed"

# take_pid PID: starts a sleeping process with that pid: the kernel gives
# the next fork ns_last_pid + 1, unless another task forked in between
# (then try again). Sets SQUATTER. The sleep holds none of the test's
# output (a failing test must not leave the console pipe open) and dies
# with the test.
SQUATTER=
trap '[ -z "$SQUATTER" ] || kill "$SQUATTER" 2>/dev/null || true' EXIT
take_pid() {
	local i=0
	while [ "$i" -lt 100 ]; do
		echo $(($1 - 1)) >/proc/sys/kernel/ns_last_pid
		sleep 3600 </dev/null >/dev/null 2>&1 &
		SQUATTER=$!
		[ "$SQUATTER" = "$1" ] && return 0
		kill "$SQUATTER"
		wait "$SQUATTER" 2>/dev/null || true
		i=$((i + 1))
	done
	return 1
}

# server_column: the SERVER column img list shows for DEV.
server_column() { csi-qcow2 img list | awk -v d="$DEV" '$1 == d { print $5 }'; }

echo "1. the recorded pid reused"
kill_server
take_pid "$recorded" || fail "could not start a process with pid $recorded"
wait_for 60 grep -qx sleep "/proc/$recorded/comm" || fail "pid $recorded is not a sleep"
echo "pid $recorded is now a sleep"
[ "$(cat "$sys/pid")" = "$recorded" ] || fail "the kernel's pid changed"
[ "$(server_column)" = dead ] || fail "img list: server $(server_column), want dead (pid $recorded is a sleep)"
readopt disk.qcow2 $ATTACH_ARGS
listed_as_served
[ "$(cat "$sys/pid")" = "$recorded" ] || fail "RECONFIGURE changed the recorded pid"
dd if="$DEV" bs=1M count=1 iflag=direct 2>/dev/null | cmp - data || fail "data differs after the re-adoption"

echo "2. a live re-adopter, the recorded pid dead"
kill "$SQUATTER"
wait "$SQUATTER" 2>/dev/null || true
SQUATTER=
[ ! -e "/proc/$recorded" ] || fail "pid $recorded still exists"
# Another image, so that the image lock does not refuse it first.
csi-qcow2 img create -f qcow2 other.qcow2 16M >/dev/null
if timeout 120 csi-qcow2 img attach other.qcow2 --id "$ID" $ATTACH_ARGS >other.out 2>other.log; then
	fail "a second server of $ID was accepted: $(cat other.out)"
fi
cat other.log
grep -q "served by a live process" other.log || fail "the second server was refused for another reason"
listed_as_served
dd if="$DEV" bs=1M count=1 iflag=direct 2>/dev/null | cmp - data || fail "data differs after the refused attach"

echo "3. the image's size against the device's"
kill_server
csi-qcow2 img resize --shrink disk.qcow2 8M || fail "img resize --shrink failed"
if timeout 120 csi-qcow2 img attach disk.qcow2 --id "$ID" $ATTACH_ARGS >small.out 2>small.log; then
	fail "an image smaller than the device was re-adopted"
fi
cat small.log
grep -q "has 16777216 bytes but the image only 8388608" small.log || fail "refused for another reason"
[ "$(blockdev --getsize64 "$DEV")" = 16777216 ] || fail "the refused attach changed the device's size"
csi-qcow2 img resize disk.qcow2 24M >/dev/null || fail "img resize failed"
marker="vmtest 47-readopt: growing by re-adoption $$"
echo "$marker" >/dev/kmsg
readopt disk.qcow2 $ATTACH_ARGS
grep -q "grown from 16777216 to 25165824 bytes" "attach-$ID.log" || fail "the server did not grow the device"
[ "$(blockdev --getsize64 "$DEV")" = 25165824 ] || fail "blockdev --getsize64: $(blockdev --getsize64 "$DEV"), want 25165824"
dmesg | sed -n "/$marker/,\$p" | grep -q "${DEV#/dev/}: detected capacity change from 32768 to 49152" ||
	fail "the kernel did not log the capacity change"
dd if="$DEV" bs=1M count=1 iflag=direct 2>/dev/null | cmp - data || fail "data differs after growing"
dd if=data of="$DEV" bs=1M seek=20 oflag=direct conv=fsync 2>/dev/null || fail "write past the old end failed"
dd if="$DEV" bs=1M skip=20 count=1 iflag=direct 2>/dev/null | cmp - data || fail "data past the old end differs"
detach
# The two kills may leak clusters the servers had reserved (DESIGN.md rule
# 3), nothing worse.
image_checks_clean_after_crash disk.qcow2 640
csi-qcow2 img convert -O raw disk.qcow2 disk.raw
dd if=disk.raw bs=1M skip=20 count=1 2>/dev/null | cmp - data || fail "the image does not hold the data past the old end"
no_io_errors
