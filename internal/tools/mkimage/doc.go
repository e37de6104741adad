// Command mkimage builds the csi-qcow2 driver's OCI container image without
// a container engine: it owns turning a directory tree (the runtime root
// that scripts/build-image.sh extracts from Debian packages) and the static
// csi-qcow2 binary into image layers, the image's config (entrypoint, cmd,
// env, labels) and the OCI image layout tarball that `ctr images import`
// and `docker load` read.
//
// Layers, manifests, the config and the layout are made with
// github.com/google/go-containerregistry; only the layers' tar streams are
// written here, because the library has no "layer from a directory".
// Every timestamp is the -epoch given (SOURCE_DATE_EPOCH), so the same
// inputs give the same image digest.
//
// It must not import the driver's packages (anything under pkg/ or cmd/ of
// this module): it packages the binary as a file and checks it as an ELF
// file; linking the driver would make the image tool depend on what it
// packages.
//
// Usage (scripts/build-image.sh, `make image`):
//
//	mkimage -root ROOT -binary bin/csi-qcow2 -version v0.1.0 \
//	  -name localhost/csi-qcow2 -label org.opencontainers.image.source=URL \
//	  -out bin/csi-qcow2-image.tar
package main
