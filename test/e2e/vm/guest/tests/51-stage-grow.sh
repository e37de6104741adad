# The driver grows a restore or clone into a larger claim when it stages
# it: ext4 online, which needs CAP_SYS_RESOURCE (the guest's root has it,
# the host's test root does not), on kernel NBD. Its own script so that it
# has its own time bound beside 50-driver's long set.
. /lib/vmtest.sh
CSI_QCOW2_ATTACH_PATH=nbd driver.test -test.run '^TestNodeStageGrowsCopiesIntoLargerClaims$/^ext4$' \
	-test.v -test.timeout 280s >go-test.out 2>&1 || {
	cat go-test.out
	fail "stage-time growth on kernel NBD failed"
}
grep -q 'attach path chosen.*path="nbd"' go-test.out || fail "the driver did not choose kernel NBD"
grep -q -- "--- PASS: TestNodeStageGrowsCopiesIntoLargerClaims/ext4 " go-test.out ||
	fail "TestNodeStageGrowsCopiesIntoLargerClaims/ext4 did not pass"
no_io_errors
