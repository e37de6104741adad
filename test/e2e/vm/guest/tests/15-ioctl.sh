# The ioctl fallback (NBD_SET_SOCK + NBD_DO_IT, for kernels without the
# netlink family) serves a device too; it records no backend identifier.
. /lib/vmtest.sh
csi-qcow2 img create -f qcow2 disk.qcow2 64M >/dev/null
csi-qcow2 img attach disk.qcow2 --ioctl --device /dev/nbd5 >attach.out 2>attach-ioctl.log &
SERVER_PID=$!
wait_for 60 grep -q /dev/nbd5 attach.out || fail "no device"
wait_for 60 test -f /sys/block/nbd5/pid || fail "nbd5 not configured"
[ ! -s /sys/block/nbd5/backend ] 2>/dev/null || fail "ioctl attach has a backend identifier"
[ "$(cat /sys/block/nbd5/size)" = $((64 * 2048)) ] || fail "nbd5 size $(cat /sys/block/nbd5/size) sectors"
dd if=/dev/urandom of=data bs=1M count=2 2>/dev/null
dd if=data of=/dev/nbd5 bs=1M seek=3 conv=fsync 2>/dev/null || fail "write failed"
echo 3 >/proc/sys/vm/drop_caches
dd if=/dev/nbd5 bs=1M skip=3 count=2 2>/dev/null | cmp - data || fail "read back differs"
csi-qcow2 img detach /dev/nbd5
wait "$SERVER_PID" || fail "server exited with an error"
[ ! -f /sys/block/nbd5/pid ] || fail "nbd5 still configured"
csi-qcow2 img check disk.qcow2 || fail "image not clean"
csi-qcow2 img convert -O raw disk.qcow2 disk.raw
dd if=disk.raw bs=1M skip=3 count=2 2>/dev/null | cmp - data || fail "image content differs"
no_io_errors
