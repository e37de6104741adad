# kill -9 of the serving process during a write load on a mounted ext4: a
# new "img attach" finds the device by its backend identifier, re-opens the
# image and RECONFIGUREs the device; the load goes on without an I/O
# error, the data verifies, the filesystem checks clean and the image has
# no corruption (clusters the killed server had reserved may leak, which
# DESIGN.md rule 3 allows, but at most a bounded number per kill;
# repairing them leaves a clean image).
#
# The load runs until the kills are done, whatever the host's speed, and
# each kill is shown to land while a write waits on the device
# (kill_under_load).
. /lib/vmtest.sh
ID=vol-restart
srcs=7
slots=16
kills=2
if [ "$VMTEST_STRESS" = 1 ]; then
	slots=160
	kills=5
fi
csi-qcow2 img create -f qcow2 disk.qcow2 256M >/dev/null
attach disk.qcow2 "$ID" --timeout 3s --dead-conn-timeout 300s
mkfs_dev ext4 "$DEV"
mkdir -p mnt
mount -t ext4 "$DEV" mnt
make_files src "$srcs" 1024

# A load step copies a source file over a slot file with fsync, so each
# acknowledged step is a flushed write; step I writes src/f(I mod srcs) to
# mnt/s(I mod slots), so slots are overwritten with new data as it runs.
copy_step() {
	dd if="src/f$(($1 % srcs))" of="mnt/s$(($1 % slots))" bs=64k conv=fsync
}
start_load copy_step

k=0
while [ "$k" -lt "$kills" ]; do
	kill_under_load disk.qcow2 --timeout 3s --dead-conn-timeout 300s
	k=$((k + 1))
done
stop_load

# What each slot must hold: the source of the last step that wrote it.
steps=$(load_acked)
: >sums
s=0
while [ "$s" -lt "$slots" ] && [ "$s" -lt "$steps" ]; do
	last=$((s + (steps - 1 - s) / slots * slots))
	echo "$(sha256sum <"src/f$((last % srcs))" | cut -d' ' -f1)  s$s" >>sums
	s=$((s + 1))
done
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
