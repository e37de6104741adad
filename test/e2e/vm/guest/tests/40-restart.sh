# kill -9 of the serving process during a write load on a mounted ext4: a
# new "img attach" finds the device by its backend identifier, re-opens the
# image and RECONFIGUREs the device; the load finishes without an I/O
# error, the data verifies, the filesystem checks clean and the image has
# no corruption (clusters the killed server had reserved may leak, which
# DESIGN.md rule 3 allows, but at most a bounded number per kill;
# repairing them leaves a clean image).
. /lib/vmtest.sh
ID=vol-restart
files=16
kills=1
if [ "$VMTEST_STRESS" = 1 ]; then
	files=200
	kills=5
fi
csi-qcow2 img create -f qcow2 disk.qcow2 256M >/dev/null
attach disk.qcow2 "$ID" --timeout 3s --dead-conn-timeout 90s
mkfs_dev ext4 "$DEV"
mkdir -p mnt
mount -t ext4 "$DEV" mnt
make_files src "$files" 1024
(cd src && sha256sum f*) >sums

# The load: each file copied with fsync, so every one of them is an
# acknowledged, flushed write when dd returns.
(
	i=0
	while [ "$i" -lt "$files" ]; do
		if ! dd if="src/f$i" of="mnt/f$i" bs=64k conv=fsync 2>dd.err; then
			cat dd.err >>load.err
			exit 1
		fi
		i=$((i + 1))
	done
) &
load=$!

k=0
while [ "$k" -lt "$kills" ]; do
	sleep 1
	kill -0 "$load" 2>/dev/null || fail "the load finished before kill $k: make it longer"
	kill_and_readopt disk.qcow2 --timeout 3s --dead-conn-timeout 90s
	k=$((k + 1))
done

wait "$load" || { cat load.err; fail "the load failed"; }
[ ! -s load.err ] || { cat load.err; fail "the load reported errors"; }
(cd mnt && sha256sum -c ../sums) >/dev/null || fail "data differs after the restarts"
umount mnt
$E2FSCK -fn "$DEV" || fail "the filesystem is not clean"
detach
# A kill leaks at most the unused part of one reservation batch (1/32 of
# the 256 MiB disk: 128 clusters of 64 KiB), as many deferred frees and
# the clusters of the requests in flight (docs/engine.md, allocator).
image_checks_clean_after_crash disk.qcow2 $((320 * kills))
attach disk.qcow2 "$ID"
mount -t ext4 "$DEV" mnt
(cd mnt && sha256sum -c ../sums) >/dev/null || fail "data differs after a clean re-attach"
umount mnt
detach
no_io_errors
