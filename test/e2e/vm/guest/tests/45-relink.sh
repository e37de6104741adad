# A server that stops answering (SIGSTOP) past the kernel's request timeout
# gets its connection marked dead by the kernel; when it runs again it sees
# the socket shut down, hands the device a new one by RECONFIGURE, and the
# I/O the kernel held completes without errors.
. /lib/vmtest.sh
ID=vol-relink
csi-qcow2 img create -f qcow2 disk.qcow2 128M >/dev/null
attach disk.qcow2 "$ID" --timeout 1s --dead-conn-timeout 300s
dd if=/dev/urandom of=data bs=1M count=4 2>/dev/null
# Only kernel lines after this marker count: the ring buffer may wrap.
marker="vmtest 45-relink: stopping the server $$"
echo "$marker" >/dev/kmsg
kernel_timed_out() { dmesg | sed -n "/$marker/,\$p" | grep -q "Connection timed out"; }
kill -STOP "$SERVER_PID"
dd if=data of="$DEV" bs=1M seek=8 conv=fsync 2>dd.err &
writer=$!
# The server stays stopped until the kernel has timed a request out (its
# 1 s timeout, however long the guest takes to get there).
wait_for 60 kernel_timed_out || fail "the kernel did not time out a request within 60 s"
kill -CONT "$SERVER_PID"
wait "$writer" || { cat dd.err; fail "write through a relinked connection failed"; }
grep -q "reconnecting" "attach-$ID.log" || fail "the server did not reconnect"
dd if="$DEV" bs=1M skip=8 count=4 2>/dev/null | cmp -n $((4 * 1048576)) - data || fail "data differs"
kill -0 "$SERVER_PID" || fail "the server exited"
detach
csi-qcow2 img check disk.qcow2 || fail "image not clean"
no_io_errors
