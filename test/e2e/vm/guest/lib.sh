# Helpers for the guest test scripts (sourced; scripts run under sh -e).

# The real tools: busybox's shell prefers its own applets of the same names
# (mke2fs, blkdiscard) to anything on PATH.
MKE2FS=/usr/sbin/mke2fs
E2FSCK=/usr/sbin/e2fsck
BLKDISCARD=/usr/sbin/blkdiscard

fail() {
	echo "FAIL: $*"
	local f
	# A load left running would write on into the next test's time.
	[ -z "$LOAD_PID" ] || kill "$LOAD_PID" 2>/dev/null || true
	for f in attach-*.log; do
		[ -s "$f" ] || continue
		echo "--- $f"
		cat "$f"
	done
	exit 1
}

# wait_for SECONDS CMD...: runs CMD every 0.1 s until it succeeds; fails
# (returns 1) once SECONDS have passed on the clock, however slowly the
# guest runs.
wait_for() {
	local end=$(($(date +%s) + $1))
	shift
	until "$@" >/dev/null 2>&1; do
		[ "$(date +%s)" -lt "$end" ] || return 1
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
	if ! wait_for 60 grep -q /dev/nbd "attach-$id.out"; then
		cat "attach-$id.log"
		fail "attach $img: no device after 60 s"
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

# kill_server: kill -9 the server of $DEV and reap it.
kill_server() {
	echo "kill -9 server $SERVER_PID"
	kill -9 "$SERVER_PID"
	wait "$SERVER_PID" || true
}

# readopt IMAGE [ATTACH ARGS...]: attach IMAGE again with the same $ID
# after its server died; the new server must re-adopt the same device.
readopt() {
	local img=$1 old=$DEV lines
	shift
	lines=$(cat "attach-$ID.log" 2>/dev/null | wc -l)
	attach "$img" "$ID" "$@"
	[ "$DEV" = "$old" ] || fail "re-attach made a new device $DEV instead of re-adopting $old"
	# Only the new server's lines: an earlier one logged re-adoption too.
	tail -n +$((lines + 1)) "attach-$ID.log" | grep -q "re-adopted $DEV" || fail "the new server did not re-adopt $DEV"
}

# A load is a command run over and over in the background until
# stop_load: start_load CMD... runs "CMD... I" for I = 0, 1, 2, ... and
# appends I to load.started before and to load.acked after each run that
# succeeded, so the test can count the steps acknowledged so far and see
# whether one is outstanding. A step that fails ends the load with its
# error in load.err. The load never ends by itself, so a test cannot
# outlast it.
start_load() {
	rm -f load.started load.acked load.stop load.err
	: >load.started
	: >load.acked
	(
		i=0
		while [ ! -e load.stop ]; do
			echo "$i" >>load.started
			if ! "$@" "$i" 2>load.step.err; then
				cat load.step.err >>load.err
				echo "load step $i failed" >>load.err
				exit 1
			fi
			echo "$i" >>load.acked
			i=$((i + 1))
		done
	) &
	LOAD_PID=$!
}

# load_started, load_acked: how many load steps began, and how many were
# acknowledged (returned successfully).
load_started() { wc -l <load.started; }
load_acked() { wc -l <load.acked; }

# load_blocked: true when a load step has begun and neither it returns
# nor another begins for a second. With the server dead, a step that writes
# through the device waits until the device has a server again, however
# long that takes; a step that finishes, or a load that does not touch the
# device at all, fails this. (The second is no deadline: a blocked step
# stays blocked.)
load_blocked() {
	local s a
	s=$(load_started)
	a=$(load_acked)
	[ "$s" -gt "$a" ] || return 1
	sleep 1
	[ "$(load_started)" = "$s" ] && [ "$(load_acked)" = "$a" ]
}

# load_reached N: true once N steps were acknowledged, or the load failed.
load_reached() { [ "$(load_acked)" -ge "$1" ] || [ -s load.err ]; }

# wait_load N SECONDS WHEN: waits until the load acknowledged N steps;
# fails, saying WHEN, if it took longer than SECONDS or the load failed.
wait_load() {
	wait_for "$2" load_reached "$1" ||
		fail "the load acknowledged $(load_acked) steps, not $1, within $2 s $3"
	[ ! -s load.err ] || {
		cat load.err
		fail "the load failed after $(load_acked) acknowledged steps $3"
	}
}

# stop_load: asks the load to stop after its current step, waits for it,
# and fails on any error it saw. Prints how many steps it acknowledged.
stop_load() {
	touch load.stop
	wait "$LOAD_PID" || { cat load.err; fail "the load failed"; }
	[ ! -s load.err ] || { cat load.err; fail "the load reported errors"; }
	echo "the load stopped after $(load_acked) acknowledged steps"
}

# kill_under_load IMAGE [ATTACH ARGS...]: kill -9 the server of $DEV while
# the load writes through it, and re-adopt the device. Shown, not assumed:
# the load acknowledged two more steps just before the kill (it is
# running); with the server dead a step stays outstanding (it waits on the
# device: the kill did not find the device idle); and that very step and
# one more are acknowledged after the re-adoption (the held writes went
# through the new server). Each wait is on its condition, bounded
# generously for a loaded host.
kill_under_load() {
	local img=$1 before pending
	shift
	wait_load $(($(load_acked) + 2)) 120 "before the kill"
	before=$(load_acked)
	kill_server
	wait_for 60 load_blocked ||
		fail "no load step stayed outstanding with the server dead (60 s): the kill found the device idle"
	pending=$(load_started)
	readopt "$img" "$@"
	wait_load $((pending + 1)) 120 "after the re-adoption"
	echo "kill under load: $before steps acknowledged before the kill, step $((pending - 1)) outstanding while the server was dead, $(load_acked) acknowledged after the re-adoption"
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
