# ext4 on an attached qcow2 image survives detach and re-attach; the device
# is the one asked for (NBD_ATTR_INDEX) rather than one the kernel picks.
. /lib/vmtest.sh
fs_roundtrip ext4 256M --device /dev/nbd3
[ "$DEV" = /dev/nbd3 ] || fail "attached as $DEV, not the requested /dev/nbd3"
