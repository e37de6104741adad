# Online resize at the nbdattach layer, by the package's own TestKernel*
# tests (pkg/nbdattach/kernel_resize_test.go) run on this kernel: a device
# grows under a block load, through netlink (RECONFIGURE with the new
# size) and through the ioctl fallback; the kernel reports the new size
# (BLKGETSIZE64), logs the capacity change and sends a change uevent with
# RESIZE=1; data written past the old end reads back and is in the file;
# a connection replaced after the resize keeps the new size.
. /lib/vmtest.sh
CSI_QCOW2_KERNEL_NBD=1 nbdattach.test -test.run '^TestKernel' -test.v -test.timeout 240s >go-test.out 2>&1 || {
	cat go-test.out
	fail "the nbdattach kernel tests failed"
}
cat go-test.out
# Each test must have run here, not skipped.
for t in TestKernelResizeUnderLoad/ioctl=false TestKernelResizeUnderLoad/ioctl=true TestKernelRelinkKeepsGrownSize; do
	grep -q -- "--- PASS: $t " go-test.out || fail "$t did not pass"
done
no_io_errors
