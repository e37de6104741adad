# kill -9 of the serving process while copy-on-write writes into an overlay
# wait in the write journal (answered, never flushed): the next attach
# re-adopts the device, the engine replays the journal (the same boot, so
# the page cache kept every byte the journal maps), and every answered
# write reads back; the image then checks clean and the journal is gone.
# The kill lands while more such writes are outstanding: a load keeps
# writing until the kill is done (kill_under_load).
. /lib/vmtest.sh
ID=vol-journal
blocks=64
dd if=/dev/urandom of=base.raw bs=1M count=16 2>/dev/null
csi-qcow2 img create -f qcow2 -b base.raw -F raw disk.qcow2 >/dev/null
attach disk.qcow2 "$ID" --timeout 3s --dead-conn-timeout 300s
dd if=/dev/urandom of=new.bin bs=4k count=$blocks 2>/dev/null
cp base.raw want.raw
# 4 KiB writes 244 KiB apart: each lands in a 64 KiB cluster of its own,
# a copy-on-write from the base. O_DIRECT: each returns when the server
# answered it, and nothing sends a FLUSH.
i=0
while [ "$i" -lt $blocks ]; do
	dd if=new.bin of="$DEV" bs=4k skip="$i" seek=$((i * 61)) count=1 oflag=direct conv=notrunc 2>/dev/null ||
		fail "direct write $i failed"
	dd if=new.bin of=want.raw bs=4k skip="$i" seek=$((i * 61)) count=1 conv=notrunc 2>/dev/null
	i=$((i + 1))
done
# The image's incompatible feature bit 63 (the first byte of the field at
# offset 72) says its L2 tables lack mappings that only the journal has.
[ "$(od -An -tx1 -j72 -N1 disk.qcow2 | tr -d ' ')" = 80 ] || fail "no journal-only mappings before the kill"
[ -s disk.qcow2.journal ] || fail "no write journal beside the image"
echo "$blocks copy-on-write writes in the journal"
# A load step writes one more 4 KiB block (most of them copy-on-write into
# a cluster not written yet), then records it in want.raw once answered.
cow_step() {
	local b=$((($1 * 37 + 11) % 4096)) from=$(($1 % blocks))
	dd if=new.bin of="$DEV" bs=4k skip="$from" seek="$b" count=1 oflag=direct conv=notrunc &&
		dd if=new.bin of=want.raw bs=4k skip="$from" seek="$b" count=1 conv=notrunc
}
start_load cow_step
kill_under_load disk.qcow2 --timeout 3s --dead-conn-timeout 300s
stop_load
dd if="$DEV" of=got.raw bs=1M count=16 iflag=direct 2>/dev/null || fail "reading the device back failed"
cmp got.raw want.raw || fail "answered writes were lost across kill -9"
detach
[ ! -e disk.qcow2.journal ] || fail "the journal is left after a clean detach"
image_checks_clean_after_crash disk.qcow2 320
csi-qcow2 img convert -O raw disk.qcow2 final.raw
cmp final.raw want.raw || fail "the image differs from what was written"
no_io_errors
