# TRIM and WRITE_ZEROES reach the image: fstrim after deleting files punches
# holes in the image file, blkdiscard -z reads back as zeros, and a plain
# discard frees the image's space.
. /lib/vmtest.sh
ID=vol-discard
MiB=1048576
csi-qcow2 img create -f qcow2 disk.qcow2 256M >/dev/null
attach disk.qcow2 "$ID"
mkfs_dev ext4 "$DEV"
mkdir -p mnt
mount -t ext4 -o nodiscard "$DEV" mnt
make_files mnt/big 1 16384
sync
full=$(allocated disk.qcow2)
rm mnt/big/f0
sync
fstrim -v mnt
sync
trimmed=$(allocated disk.qcow2)
echo "image allocation: $full bytes with a 16 MiB file, $trimmed after rm + fstrim"
[ "$trimmed" -le $((full - 12 * MiB)) ] || fail "fstrim freed less than 12 MiB of the image"
umount mnt

# Raw device: 8 MiB of random data at 100 MiB. blkdiscard -z zeroes the
# first half (BLKZEROOUT: WRITE_ZEROES with NO_HOLE, so the image keeps the
# space), a plain blkdiscard the second half (TRIM: the space is freed).
dd if=/dev/urandom of=rand bs=1M count=8 2>/dev/null
dd if=rand of="$DEV" bs=1M seek=100 conv=fsync 2>/dev/null
before=$(allocated disk.qcow2)
$BLKDISCARD -f -z -o $((100 * MiB)) -l $((4 * MiB)) "$DEV"
dd if="$DEV" bs=1M skip=100 count=4 2>/dev/null | cmp -n $((4 * MiB)) - /dev/zero ||
	fail "blkdiscard -z range does not read as zeros"
dd if="$DEV" bs=1M skip=104 count=4 2>/dev/null | cmp -n $((4 * MiB)) - rand 0 $((4 * MiB)) ||
	fail "data next to the zeroed range changed"
sync
zeroed=$(allocated disk.qcow2)
$BLKDISCARD -f -o $((104 * MiB)) -l $((4 * MiB)) "$DEV"
sync
after=$(allocated disk.qcow2)
echo "image allocation: $before bytes before, $zeroed after zeroing 4 MiB, $after after discarding 4 MiB"
[ "$zeroed" -ge $((before - MiB)) ] || fail "WRITE_ZEROES with NO_HOLE freed the image's space"
[ "$after" -le $((zeroed - 3 * MiB)) ] || fail "discard of 4 MiB freed less than 3 MiB"
dd if="$DEV" bs=1M skip=104 count=4 2>/dev/null | cmp -n $((4 * MiB)) - /dev/zero ||
	fail "discarded range does not read as zeros"
detach
csi-qcow2 img check disk.qcow2 || fail "image not clean"
no_io_errors
