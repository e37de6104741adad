# The CSI driver's node service on kernel NBD: the package's own tests
# (pkg/driver) with the attach path forced to nbd, so that a fallback
# cannot pass for it. csi-sanity's Identity, Controller and Node specs for
# both snapshot types and both access types; stage, publish, write and
# read back, filesystem and block; what a mounted filesystem holds read
# back from restores of both snapshot types and a clone, and fstrim
# shrinking the volume's top; online expansion of ext4 (the guest's root
# may grow it), xfs and a block device; a read-only block stage; kill -9
# of the driver (a child process) under an O_DIRECT + fdatasync write
# load and a restart: no I/O error, every acknowledged write reads back.
. /lib/vmtest.sh
tests='^(TestSanity|TestNodeMountRoundTrip|TestNodeBlockRoundTrip|TestNodeExpand|TestNodeReaderOnlyBlock|TestNodeDataThroughSnapshotsAndClones|TestNodeRestartUnderLoad)$'
CSI_QCOW2_ATTACH_PATH=nbd driver.test -test.run "$tests" -test.v -test.timeout 280s >go-test.out 2>&1 || {
	cat go-test.out
	fail "the driver's tests on kernel NBD failed"
}
grep -E -- '^\s*--- |attach path chosen|passed|acknowledged|taken over' go-test.out
grep -q 'attach path chosen.*path="nbd"' go-test.out || fail "the driver did not attach through kernel NBD"
for t in TestSanity/external/mount TestSanity/external/block TestSanity/internal/mount TestSanity/internal/block \
	TestNodeMountRoundTrip TestNodeBlockRoundTrip TestNodeExpand/block TestNodeExpand/xfs TestNodeExpand/ext4 \
	TestNodeReaderOnlyBlock TestNodeDataThroughSnapshotsAndClones TestNodeRestartUnderLoad; do
	grep -q -- "--- PASS: $t " go-test.out || fail "$t did not pass"
done
no_io_errors
