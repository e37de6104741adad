# Helpers for the guest test scripts (sourced; scripts run under sh -e).

# The real tools: busybox's shell prefers its own applets of the same names
# (mke2fs, blkdiscard) to anything on PATH.
MKE2FS=/usr/sbin/mke2fs
E2FSCK=/usr/sbin/e2fsck
BLKDISCARD=/usr/sbin/blkdiscard

fail() {
	echo "FAIL: $*"
	local f
	for f in attach-*.log; do
		[ -s "$f" ] || continue
		echo "--- $f"
		cat "$f"
	done
	exit 1
}

# wait_for SECONDS CMD...: runs CMD every 0.1 s until it succeeds.
wait_for() {
	local n=$(($1 * 10))
	shift
	until "$@" >/dev/null 2>&1; do
		n=$((n - 1))
		[ "$n" -gt 0 ] || return 1
		sleep 0.1
	done
}

# device_of ID: prints the /dev/nbdN whose sysfs backend is ID.
device_of() {
	local b d
	for b in /sys/block/nbd*/backend; do
		[ -f "$b" ] || continue
		if [ "$(cat "$b")" = "$1" ]; then
			d=${b%/backend}
			echo "/dev/${d##*/}"
			return 0
		fi
	done
	return 1
}

# attach IMAGE ID [ARGS...]: starts "img attach" in the background and
# waits for its device; sets SERVER_PID and DEV.
attach() {
	local img=$1 id=$2
	shift 2
	# Removed here, not truncated by the background job's redirection: a
	# wait that ran first would read the previous server's device.
	rm -f "attach-$id.out"
	csi-qcow2 img attach "$img" --id "$id" "$@" >"attach-$id.out" 2>>"attach-$id.log" &
	SERVER_PID=$!
	if ! wait_for 30 grep -q /dev/nbd "attach-$id.out"; then
		cat "attach-$id.log"
		fail "attach $img: no device after 30 s"
	fi
	DEV=$(cat "attach-$id.out")
	# A warning here would be PR_SET_IO_FLUSHER failing.
	! grep -q warning "attach-$id.log" || fail "img attach warned: $(cat "attach-$id.log")"
	[ "$(device_of "$id")" = "$DEV" ] || fail "sysfs backend of $DEV is not $id"
	echo "attached $img as $DEV (server $SERVER_PID)"
}

# detach: detaches DEV and checks that its server exits cleanly.
detach() {
	csi-qcow2 img detach "$DEV"
	if ! wait "$SERVER_PID"; then
		cat "attach-$ID.log" 2>/dev/null
		fail "server of $DEV exited with an error"
	fi
	! device_of "$ID" >/dev/null || fail "$DEV still carries backend $ID after detach"
}

# allocated FILE: bytes the file occupies (st_blocks * 512).
allocated() {
	echo $(($(stat -c %b "$1") * 512))
}

# mkfs_dev FSTYPE DEV: makes an ext4 or xfs filesystem.
mkfs_dev() {
	case $1 in
	ext4) $MKE2FS -q -t ext4 -F "$2" ;;
	xfs) /usr/sbin/mkfs.xfs -q -f "$2" ;;
	*) fail "mkfs_dev: unknown filesystem $1" ;;
	esac
}

# make_files DIR COUNT KIB: COUNT files of random data, KIB KiB each.
make_files() {
	local i=0
	mkdir -p "$1"
	while [ "$i" -lt "$2" ]; do
		dd if=/dev/urandom of="$1/f$i" bs=1k count="$3" 2>/dev/null
		i=$((i + 1))
	done
}

# kill_and_readopt IMAGE [ATTACH ARGS...]: kill -9 the server of $DEV and
# attach IMAGE again with the same $ID; the new server must re-adopt the
# same device.
kill_and_readopt() {
	local img=$1 old=$DEV
	shift
	echo "kill -9 server $SERVER_PID"
	kill -9 "$SERVER_PID"
	wait "$SERVER_PID" || true
	attach "$img" "$ID" "$@"
	[ "$DEV" = "$old" ] || fail "re-attach made a new device $DEV instead of re-adopting $old"
	grep -q "re-adopted $DEV" "attach-$ID.log" || fail "the new server did not re-adopt $DEV"
}

# no_io_errors: fails when the kernel logged an I/O error or a filesystem
# error. (A restart logs "Receive control failed" and "Connection timed out,
# retrying": those are the kernel noticing the dead server and requeueing,
# not errors reaching anyone.)
no_io_errors() {
	if dmesg | grep -iE "i/o error|EXT4-fs error|XFS .*(error|corrupt)"; then
		fail "the kernel logged I/O errors"
	fi
}

# listed_as_served: img list shows DEV connected (netlink STATUS), its
# server alive and its backend identifier.
listed_as_served() {
	csi-qcow2 img list >list.out
	grep -qE "^$DEV +[0-9]+ +yes +[0-9]+ +alive +$ID\$" list.out || {
		cat list.out
		fail "img list does not show $DEV served with backend $ID"
	}
}

# fs_roundtrip FSTYPE SIZE [ATTACH ARGS...]: attach a new qcow2 image
# through netlink, make a filesystem, write files, detach, re-attach,
# verify their checksums, and check the image.
fs_roundtrip() {
	local fstype=$1 size=$2
	shift 2
	ID=vol-$fstype
	csi-qcow2 img create -f qcow2 disk.qcow2 "$size" >/dev/null
	attach disk.qcow2 "$ID" "$@"
	listed_as_served
	mkfs_dev "$fstype" "$DEV"
	mkdir -p mnt
	mount -t "$fstype" "$DEV" mnt
	make_files mnt/data 8 512
	(cd mnt && sha256sum data/*) >sums
	umount mnt
	detach
	csi-qcow2 img check disk.qcow2 || fail "image not clean after the first detach"
	attach disk.qcow2 "$ID" "$@"
	mount -t "$fstype" "$DEV" mnt
	(cd mnt && sha256sum -c ../sums) || fail "checksums differ after re-attach"
	umount mnt
	detach
	csi-qcow2 img check disk.qcow2 || fail "image not clean at the end"
	no_io_errors
}

# image_checks_clean_after_crash IMAGE [MAX_LEAKS]: an image a killed server
# wrote may leak clusters but nothing worse (check exits 0, or 3 for leaks
# only), and no more than MAX_LEAKS of them when given (the engine bounds
# what a kill leaks: docs/engine.md, allocator); after "check -r leaks" it
# checks clean.
image_checks_clean_after_crash() {
	local rc=0 leaks
	csi-qcow2 img check "$1" >check.out 2>&1 || rc=$?
	grep -v "^Leaked cluster" check.out
	case $rc in
	0) return 0 ;;
	3) ;;
	*) fail "img check of $1 exited $rc: corruption or check error" ;;
	esac
	leaks=$(sed -n 's/^\([0-9][0-9]*\) leaked clusters were found.*/\1/p' check.out)
	[ -n "$leaks" ] || fail "img check of $1 exited 3 without a leak count"
	echo "$1: $leaks leaked clusters after the crash (at most ${2:-any} allowed), file $(wc -c <"$1") bytes"
	if [ -n "$2" ] && [ "$leaks" -gt "$2" ]; then
		fail "$1 leaked $leaks clusters, more than the bound $2"
	fi
	csi-qcow2 img check -r leaks "$1" >/dev/null 2>&1 || fail "img check -r leaks $1 failed"
	csi-qcow2 img check "$1" || fail "$1 not clean after repairing leaks"
}
