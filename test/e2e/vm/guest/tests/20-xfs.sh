# xfs on an attached qcow2 image survives detach and re-attach (xfsprogs
# wants at least 300 MB), served over 4 connections (the engine's adapter
# offers CAN_MULTI_CONN).
. /lib/vmtest.sh
fs_roundtrip xfs 320M --connections 4
