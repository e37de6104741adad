# xfs on an attached qcow2 image survives detach and re-attach (xfsprogs
# wants at least 300 MB).
. /lib/vmtest.sh
fs_roundtrip xfs 320M
