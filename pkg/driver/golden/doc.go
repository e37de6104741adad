// Package golden imports golden images into the node-local store: it
// fetches an image once from an http, https or confined file: URL,
// checks it against the SHA-256 the caller names, and publishes it as a
// standalone qcow2 base at Dir/<sha256>.qcow2 (compat 1.1, 64 KiB
// clusters, no backing file), written with package convert, checked
// clean, made durable and renamed into place atomically.
//
// Everything it fetches is untrusted (DESIGN.md, "Rules for untrusted
// input"). The rules it keeps:
//
//   - Sources: http and https URLs, and file: URLs only under one of
//     Importer.FileRoots, opened through os.Root (so "..", symlinks out of
//     the root and absolute paths elsewhere reach nothing), regular files
//     only. No other scheme, and no host path from the caller reaches the
//     filesystem any other way.
//   - The SHA-256 covers exactly the bytes fetched (a .gz file's own
//     bytes, say); nothing is parsed as an image before it matched.
//   - Transport compression is recognised by content: gzip and zstd
//     streams are decompressed. The decompressed stream is bounded
//     (maxDecompressed: MaxVirtualSize plus an eighth for qcow2 metadata)
//     and so is its expansion: past 64 MiB, the bytes that are not zero
//     (the ones that take disk space) may not exceed 1024 times the bytes
//     fetched, and past 1 GiB, all bytes may not exceed 4096 times them.
//     A stream past either bound is refused as a decompression bomb.
//   - Formats are recognised by content: the qcow2 magic means qcow2;
//     VMDK, VHD, VHDX, VDI and QED images are refused by their magics;
//     everything else is raw (an ISO, a disk dump). A raw image must not
//     be empty and its size must be a multiple of 512 bytes: anything
//     else (an HTML error page served with 200, say) is "not a disk
//     image".
//   - A qcow2 image is opened read-only under the engine's confining
//     policy (BackingPolicy.Standalone: no backing file of any kind, no
//     external data file) and memory budget, with the engine's bounds
//     on every size read from it.
//   - The virtual size may not exceed Importer.MaxVirtualSize, nor the
//     bytes fetched Importer.MaxDownloadBytes.
//
// Errors that come from the source or the request wrap ErrInvalid (the
// driver answers InvalidArgument); every other error (the network, the
// disk, a cancelled context) is worth a retry.
//
// Every source is fetched into a scratch file in TmpDir first (a qcow2
// image needs random access; a raw one is spooled too, with holes where
// it is zero), so an import needs room for the fetched content and the
// new image at once.
//
// A failed or cancelled import leaves nothing in Dir and removes its
// files from TmpDir; files a crash left there are removed by Collect.
//
// Published images have mode 0444: nothing writes a golden image again.
//
// Of this module it imports only the qcow2 engine and its convert
// package; it knows nothing of CSI.
package golden
