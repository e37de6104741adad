# Build and test entry points. `make test` is what CI runs (.ci/run).

GO ?= go
# Unit, interop (qemu-img) and fuzz-seed tests. A whole run takes minutes on
# 2 cores; the timeout only catches hangs.
TEST_TIMEOUT ?= 30m
# Benchmarks: long enough per benchmark for stable numbers on a 2-core box.
BENCHTIME ?= 2s

# The driver's version: `csi-qcow2 version`, the image's tag and label.
VERSION ?= v0.1.0

.PHONY: all build image test test-repeat test-vm e2e-cluster crash-deep bench bench-convert bench-nbd bench-driver bench-attach vet fmt clean

all: build

build:
	$(GO) build -o bin/csi-qcow2 ./cmd/csi-qcow2

# The OCI image (bin/csi-qcow2-image.tar) from Debian packages, without a
# container engine; docs/image.md. Packages are cached in
# ~/.cache/csi-qcow2-image/debs.
image:
	VERSION=$(VERSION) GO=$(GO) scripts/build-image.sh

# The cluster stage of make test: make e2e-cluster, with the external
# suite's passes in TEST_EXTERNAL (all, snapshots or 0). The default runs
# the two snapshot passes, not the main one: on a new 2-core machine the
# first build of Kubernetes and the sidecars already takes over half an
# hour, and with the main pass too a cold make test came within minutes of
# CI's 90-minute limit (README.md, docs/e2e.md). TEST_CLUSTER=0 leaves the
# stage out (a machine that cannot run a cluster: no root, cgroups or loop
# devices).
TEST_CLUSTER ?= 1
TEST_EXTERNAL ?= snapshots

# KUBECONFIG is unset: test/e2e/csi would run against the cluster it names.
test:
	scripts/install-test-tools.sh
	$(GO) vet ./...
	env -u KUBECONFIG $(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...
ifneq ($(TEST_CLUSTER),0)
	CSI_QCOW2_E2E_EXTERNAL=$(TEST_EXTERNAL) $(MAKE) e2e-cluster
endif

# make test N times (default 5), HOG=1 with every core kept busy, and the
# tests that failed with their run numbers; PKGS=... runs go test on those
# packages instead of make test. scripts/test-repeat.sh --help says more.
N ?= 5
test-repeat:
	scripts/test-repeat.sh -n $(N) $(if $(filter 1,$(HOG)),--hog) $(if $(PKGS),-- $(PKGS))

# A deep crash-state run of pkg/qcow2: ROUNDS workloads (default 8, about
# 15,000 states and 80 s each on 2 cores). scripts/crash-deep.sh.
crash-deep:
	scripts/crash-deep.sh

# Only the VM test bed (docs/vm-testbed.md), verbose: every guest test's
# output. CSI_QCOW2_VM_RUN / CSI_QCOW2_VM_STRESS select and lengthen.
test-vm:
	scripts/install-test-tools.sh
	$(GO) test -count=1 -v -timeout 45m ./test/e2e/vm/

# A real single-node Kubernetes cluster on this machine (root, no container
# engine; docs/e2e.md): builds Kubernetes, e2e.test and the CSI sidecars
# once into ~/.cache/csi-qcow2-e2e and the driver's image, starts etcd, the
# control plane, kube-proxy, containerd and the kubelet, installs the Helm
# chart, runs test/e2e/csi and the Kubernetes external storage suite
# (CSI_QCOW2_E2E_EXTERNAL=0 leaves it out), tears it all down and checks
# that nothing is left.
e2e-cluster: image
	cd test/e2e/cluster && GO=$(GO) ./build-k8s.sh >/dev/null && GO=$(GO) ./build-e2e-test.sh >/dev/null && GO=$(GO) ./build-sidecars.sh >/dev/null
	CSI_QCOW2_E2E_CLUSTER=1 $(GO) test -count=1 -v -timeout 120m ./test/e2e/cluster/

bench:
	GO=$(GO) BENCHTIME=$(BENCHTIME) scripts/bench-ratios.sh

# img convert against qemu-img convert on a 2 GiB half-allocated image.
bench-convert:
	GO=$(GO) scripts/bench-convert.sh

# fio's nbd engine against img serve and qemu-nbd, qcow2 overlay and raw.
bench-nbd:
	GO=$(GO) scripts/bench-nbd.sh

# The driver's operations (create from an image, snapshots, restores, clone)
# at 1 GiB and 1 TiB beside a host-path-style copy; docs/benchmarks.md.
bench-driver:
	$(GO) test -run '^$$' -bench '^BenchmarkDriverOps$$' -benchtime 20x -count 3 -timeout 60m ./pkg/driver/store/

# fio on a staged volume's block device (FUSE + loop here) beside a
# direct-I/O loop device on a raw file; docs/benchmarks.md.
bench-attach:
	GO=$(GO) scripts/bench-attach.sh

vet:
	$(GO) vet ./...

# Lists files gofmt would change, and fails if there are any.
fmt:
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

clean:
	rm -rf bin
