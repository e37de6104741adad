// Package fuseloop exports an nbdattach.Backend as a block device on
// kernels without nbd.ko: a FUSE file system of one file, Size() bytes
// long, served by this process, and a loop device over that file.
//
// It owns the FUSE mount, the file's semantics and the loop device; it
// knows nothing of qcow2 and must not import pkg/qcow2, CSI or Kubernetes
// packages. Attach builds the stack, Resize makes it follow a grown
// backend, Detach takes it down.
//
// What reaches the backend:
//
//   - reads and writes of the file (the file is opened FOPEN_DIRECT_IO and
//     the loop device uses direct I/O, so no page cache sits between the
//     device and the backend, and data is not cached twice);
//   - fsync, fdatasync → Flush (the loop device turns a REQ_OP_FLUSH, a
//     file system's barrier, into vfs_fsync of the file);
//   - fallocate PUNCH_HOLE|KEEP_SIZE → WriteZeroes without ZeroNoHole, and
//     ZERO_RANGE → WriteZeroes with ZeroNoHole; other modes: EOPNOTSUPP.
//     PUNCH_HOLE is not mapped to Trim on purpose: the loop driver uses it
//     both for discard and for REQ_OP_WRITE_ZEROES (BLKZEROOUT, ext4's
//     inode table zeroing), and fallocate promises zeros afterwards, which
//     Trim does not. A discard therefore arrives as a deallocating
//     WriteZeroes; a backend that deallocates there loses nothing.
//   - a backend error becomes ENOSPC (ErrNoSpace, ENOSPC, EDQUOT), EROFS
//     (read-only) or EIO: a write that was not stored always fails.
//
// The FUSE server handles requests in parallel; memory is bounded by the
// kernel's background limit (Options are fixed in mount.go) and go-fuse's
// in-flight byte budget.
//
// A restart of the serving process is not handled yet. The FUSE
// connection lives in the /dev/fuse descriptor of this process: when the
// process dies the kernel aborts the connection, every request to the
// file then fails with ENOTCONN, so the loop device returns I/O errors,
// and a file system on it goes read-only or shuts down. The mount point
// stays ("Transport endpoint is not connected") until it is unmounted,
// and the loop device until it is cleared. What the kernel offers for a
// next step: the /dev/fuse descriptor can be kept alive across a restart
// (handed to a supervisor, or to the new process over a unix socket with
// SCM_RIGHTS, or kept in systemd's fd store), so the connection never
// aborts and the new process resumes reading requests from it; requests
// that were read but not answered by the dead process are lost to it, and
// since Linux 6.9 the server can ask the kernel to queue them again with
// FUSE_NOTIFY_RESEND (FUSE_HAS_RESEND in INIT). go-fuse v2.12 supports
// neither a handed-over descriptor for an existing mount nor RESEND.
package fuseloop
