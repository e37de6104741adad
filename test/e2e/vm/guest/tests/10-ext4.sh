# ext4 on an attached qcow2 image survives detach and re-attach.
. /lib/vmtest.sh
fs_roundtrip ext4 256M
