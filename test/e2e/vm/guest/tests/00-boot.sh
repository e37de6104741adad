# The guest is a node: the nbd module is loaded, its netlink family answers
# (img list asks it for STATUS), and the devices are in sysfs.
. /lib/vmtest.sh
[ -e /sys/block/nbd0 ] || fail "no /sys/block/nbd0: nbd module not loaded"
csi-qcow2 img list --all >list.out || fail "img list: $(cat list.out)"
cat list.out
grep -q "^/dev/nbd0 .* no " list.out || fail "nbd0 not listed as unconnected by STATUS"
grep -q ext4 /proc/filesystems || fail "no ext4"
grep -q xfs /proc/filesystems || fail "no xfs"
