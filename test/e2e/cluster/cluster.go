package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Config says where the binaries are and where to report progress.
type Config struct {
	// BinDir holds kube-apiserver, kube-controller-manager, kube-scheduler
	// and kubelet (build-k8s.sh prints it). etcd, containerd, runc, ctr and
	// the CNI plugins come from the Debian packages.
	BinDir string
	// CNIBinDir holds the CNI plugins; default /usr/lib/cni.
	CNIBinDir string
	// Log receives progress lines; default os.Stderr.
	Log io.Writer
	// Images are image archives imported into containerd before the kubelet
	// starts; one must hold SandboxImage (BuildToolImage makes it).
	Images []string
	// KeepLogs keeps Root/logs when Stop removes the rest of the root. A
	// failed Start and a Stop that finds something it cannot remove keep
	// the logs whatever this says.
	KeepLogs bool
	// ReadyTimeout bounds the wait for the node to be Ready; default 3 min.
	ReadyTimeout time.Duration
}

// Cluster is a running cluster. Stop tears down everything Start made.
type Cluster struct {
	cfg Config
	// Root holds every file the cluster writes: certificates, kubeconfigs,
	// the state of every component and their logs (Root/logs).
	Root string
	// Kubeconfig is an admin (system:masters) kubeconfig.
	Kubeconfig string
	// Client is an admin client.
	Client kubernetes.Interface
	// NodeName is the one node's name.
	NodeName string
	// ContainerdSocket is containerd's address, for ctr -a.
	ContainerdSocket string
	// Bridge is the CNI bridge the pods are attached to.
	Bridge string
	// CgroupRoot is the kubelet's cgroup root, under each v1 hierarchy.
	CgroupRoot string

	procs     []*proc
	netnsSeen map[string]bool
	// hostDirs are the host directories containerd, the CNI plugins and the
	// kubelet write to regardless of their configuration that did not exist
	// before Start; Stop removes them.
	hostDirs []string
	stopped  bool
	failed   bool
	// lastNamespaces are taken down after all others (InstallChart's: the
	// CSI plugin unstages the other pods' volumes).
	lastNamespaces map[string]bool
	// kubeletBound: KubeletDir is Root/kubelet's bind (Mounts and the
	// sweep cover it).
	kubeletBound bool
	// proxyStarted: Stop deletes kube-proxy's tables (only then: makeBridge
	// refuses to start where they exist, and a cluster that never started
	// kube-proxy must not delete another's).
	proxyStarted bool
}

type proc struct {
	name string
	cmd  *exec.Cmd
	log  *os.File
	done chan struct{}
	err  error
}

const (
	serviceCIDR = "10.0.0.0/24"
	podCIDR     = "10.244.0.0/24"
	// gatewayIP is the bridge's address: the pods' gateway, and where the
	// apiserver listens, so that pods reach it through the kubernetes
	// Service (kube-proxy) as in any cluster, and nothing listens on the
	// host's own network.
	gatewayIP     = "10.244.0.1"
	gatewayPrefix = gatewayIP + "/24"
)

func (c *Cluster) logf(format string, args ...any) {
	fmt.Fprintf(c.cfg.Log, "cluster: "+format+"\n", args...)
}

func (c *Cluster) path(elem ...string) string {
	return filepath.Join(append([]string{c.Root}, elem...)...)
}

// Start brings up the cluster and waits for its node to be Ready. On error
// it has already torn down whatever it made.
func Start(ctx context.Context, cfg Config) (_ *Cluster, err error) {
	if cfg.Log == nil {
		cfg.Log = os.Stderr
	}
	if cfg.CNIBinDir == "" {
		cfg.CNIBinDir = "/usr/lib/cni"
	}
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = 3 * time.Minute
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("the local cluster needs root")
	}
	for _, b := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy"} {
		if _, err := os.Stat(filepath.Join(cfg.BinDir, b)); err != nil {
			return nil, fmt.Errorf("%w (run test/e2e/cluster/build-k8s.sh)", err)
		}
	}
	for _, b := range []string{"etcd", "containerd", "containerd-shim-runc-v2", "runc", "ctr", "ip", "nft"} {
		if _, err := exec.LookPath(b); err != nil {
			return nil, fmt.Errorf("%w (run test/e2e/cluster/build-k8s.sh)", err)
		}
	}
	root, err := os.MkdirTemp("", "csi-qcow2-e2e-")
	if err != nil {
		return nil, err
	}
	id := strings.TrimPrefix(filepath.Base(root), "csi-qcow2-e2e-")
	c := &Cluster{
		cfg:              cfg,
		Root:             root,
		NodeName:         "e2e-node",
		ContainerdSocket: filepath.Join(root, "containerd", "containerd.sock"),
		// At most 15 characters; the id keeps two clusters apart.
		Bridge:         "cq2e2e" + lastN(id, 8),
		CgroupRoot:     "/csi-qcow2-e2e-" + id,
		netnsSeen:      listNetns(),
		lastNamespaces: map[string]bool{},
		hostDirs:       missing(hostDirs),
	}
	defer func() {
		if err != nil {
			c.logf("start failed: %v", err)
			c.failed = true
			if serr := c.Stop(); serr != nil {
				c.logf("teardown: %v", serr)
			}
		}
	}()
	c.logf("root %s", root)
	if err := c.start(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// hostDirs: the shims' sockets and runc's default state (/run/containerd),
// the CNI cache (/var/lib/cni), the kubelet's container log links
// (/var/log/containers), the sandboxes' network namespaces (/run/netns), the
// kubelet's directory (KubeletDir, a bind of Root/kubelet), and /lib/modules, which the node plugin's hostPath
// makes on a host without kernel modules (this sandbox's).
var hostDirs = []string{"/run/containerd", "/var/lib/cni", "/var/log/containers", netnsDir, "/var/lib/kubelet", "/lib/modules"}

func missing(paths []string) []string {
	var m []string
	for _, p := range paths {
		if _, err := os.Lstat(p); err != nil {
			m = append(m, p)
		}
	}
	return m
}

func lastN(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func freePorts(n int) ([]int, error) {
	// Hold every listener until all are chosen so that none repeats.
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func (c *Cluster) start(ctx context.Context) error {
	for _, d := range []string{"logs", "etcd", "kubelet", "containerd", "cni/net.d", "cni/ipam", "manifests"} {
		if err := os.MkdirAll(c.path(d), 0o755); err != nil {
			return err
		}
	}
	if err := c.writeSweepRecord(); err != nil {
		return err
	}
	ports, err := freePorts(10)
	if err != nil {
		return err
	}
	etcdPort, peerPort, apiPort, cmPort, schedPort, kubeletPort, kubeletHealthz, etcdMetrics := ports[0], ports[1], ports[2], ports[3], ports[4], ports[5], ports[6], ports[7]
	proxyHealthz, proxyMetrics := ports[8], ports[9]
	// The bridge comes first: the apiserver listens on its address.
	if err := c.makeBridge(); err != nil {
		return err
	}
	// The ports were free on loopback; the apiserver's is checked again
	// on the gateway address by its listen.
	server := fmt.Sprintf("https://%s:%d", gatewayIP, apiPort)

	// Certificates and kubeconfigs.
	p, err := newPKI(c.path("pki"))
	if err != nil {
		return err
	}
	if err := p.serviceAccountKey(); err != nil {
		return err
	}
	hostname, _ := os.Hostname()
	for _, cert := range []struct {
		name, cn string
		orgs     []string
		hosts    []string
	}{
		{"apiserver", "kube-apiserver", nil, []string{gatewayIP, "127.0.0.1", "10.0.0.1", "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}},
		{"apiserver-kubelet-client", "kube-apiserver-kubelet-client", []string{"system:masters"}, nil},
		{"admin", "kubernetes-admin", []string{"system:masters"}, nil},
		{"controller-manager", "system:kube-controller-manager", nil, nil},
		{"scheduler", "system:kube-scheduler", nil, nil},
		{"kubelet-client", "system:node:" + c.NodeName, []string{"system:nodes"}, nil},
		{"kube-proxy", "system:kube-proxy", nil, nil},
		{"kubelet", c.NodeName, nil, []string{"127.0.0.1", c.NodeName, hostname}},
	} {
		if err := p.issue(cert.name, cert.cn, cert.orgs, cert.hosts); err != nil {
			return err
		}
	}
	c.Kubeconfig = c.path("admin.kubeconfig")
	for name, file := range map[string]string{"admin": c.Kubeconfig, "controller-manager": c.path("controller-manager.kubeconfig"), "scheduler": c.path("scheduler.kubeconfig"), "kubelet-client": c.path("kubelet.kubeconfig"), "kube-proxy": c.path("kube-proxy.kubeconfig")} {
		if err := p.kubeconfig(file, server, name); err != nil {
			return err
		}
	}

	// etcd.
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", etcdPort)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", peerPort)
	if err := c.spawn("etcd", "etcd",
		"--name=e2e", "--data-dir="+c.path("etcd"),
		"--listen-client-urls="+etcdURL, "--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=e2e="+peerURL,
		fmt.Sprintf("--listen-metrics-urls=http://127.0.0.1:%d", etcdMetrics),
		"--unsafe-no-fsync"); err != nil {
		return err
	}
	if err := c.waitHTTP(ctx, "etcd", etcdURL+"/health", 30*time.Second); err != nil {
		return err
	}

	// kube-apiserver.
	if err := c.spawn("kube-apiserver", filepath.Join(c.cfg.BinDir, "kube-apiserver"),
		"--etcd-servers="+etcdURL,
		"--bind-address="+gatewayIP, "--advertise-address="+gatewayIP, "--secure-port="+strconv.Itoa(apiPort),
		"--tls-cert-file="+p.path("apiserver.crt"), "--tls-private-key-file="+p.path("apiserver.key"),
		"--client-ca-file="+p.path("ca.crt"),
		// The node's name does not resolve; its InternalIP is the host's.
		"--kubelet-preferred-address-types=InternalIP,Hostname",
		"--kubelet-client-certificate="+p.path("apiserver-kubelet-client.crt"),
		"--kubelet-client-key="+p.path("apiserver-kubelet-client.key"),
		"--service-account-key-file="+p.path("sa.pub"),
		"--service-account-signing-key-file="+p.path("sa.key"),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-cluster-ip-range="+serviceCIDR,
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		"--allow-privileged=true",
		"--cert-dir="+c.path("pki", "apiserver-generated"),
	); err != nil {
		return err
	}
	if err := c.waitClient(ctx); err != nil {
		return err
	}

	// kube-controller-manager and kube-scheduler.
	cmKubeconfig := c.path("controller-manager.kubeconfig")
	if err := c.spawn("kube-controller-manager", filepath.Join(c.cfg.BinDir, "kube-controller-manager"),
		"--kubeconfig="+cmKubeconfig, "--authentication-kubeconfig="+cmKubeconfig, "--authorization-kubeconfig="+cmKubeconfig,
		"--bind-address=127.0.0.1", "--secure-port="+strconv.Itoa(cmPort),
		"--leader-elect=false", "--use-service-account-credentials=true",
		"--service-account-private-key-file="+p.path("sa.key"),
		"--root-ca-file="+p.path("ca.crt"),
		"--cluster-signing-cert-file="+p.path("ca.crt"), "--cluster-signing-key-file="+p.path("ca.key"),
		"--service-cluster-ip-range="+serviceCIDR,
		"--cert-dir="+c.path("pki", "controller-manager-generated"),
	); err != nil {
		return err
	}
	schedKubeconfig := c.path("scheduler.kubeconfig")
	if err := c.spawn("kube-scheduler", filepath.Join(c.cfg.BinDir, "kube-scheduler"),
		"--kubeconfig="+schedKubeconfig, "--authentication-kubeconfig="+schedKubeconfig, "--authorization-kubeconfig="+schedKubeconfig,
		"--bind-address=127.0.0.1", "--secure-port="+strconv.Itoa(schedPort),
		"--leader-elect=false",
		"--cert-dir="+c.path("pki", "scheduler-generated"),
	); err != nil {
		return err
	}

	// containerd, with the CNI bridge configuration it loads.
	if err := c.writeCNIConfig(); err != nil {
		return err
	}
	if err := c.writeContainerdConfig(); err != nil {
		return err
	}
	if err := c.spawn("containerd", "containerd", "--config="+c.path("containerd", "config.toml")); err != nil {
		return err
	}
	if err := c.waitSocket(ctx, "containerd", c.ContainerdSocket, 30*time.Second); err != nil {
		return err
	}
	for _, img := range c.cfg.Images {
		if err := c.ImportImage(ctx, img); err != nil {
			return err
		}
	}

	// The kubelet: the root is an rshared mount so that Bidirectional mount
	// propagation (the CSI node plugin's, of the kubelet's root and of its
	// store under Root) works; its cgroup root must exist. Its directory
	// is the usual one, KubeletDir, a bind of Root/kubelet: deployments
	// and the e2e suite (which looks under /var/lib/kubelet/pods) need no
	// other path.
	if err := syscall.Mount(c.Root, c.Root, "", syscall.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind-mount %s: %w", c.Root, err)
	}
	if err := syscall.Mount("", c.Root, "", syscall.MS_SHARED|syscall.MS_REC, ""); err != nil {
		return fmt.Errorf("make %s rshared: %w", c.Root, err)
	}
	if err := c.bindKubeletDir(); err != nil {
		return err
	}
	if err := c.makeCgroupRoot(); err != nil {
		return err
	}
	if err := c.writeKubeletConfig(p, kubeletPort, kubeletHealthz); err != nil {
		return err
	}
	if err := c.startKubeProxy(proxyHealthz, proxyMetrics); err != nil {
		return err
	}
	if err := c.spawn("kubelet", filepath.Join(c.cfg.BinDir, "kubelet"),
		"--config="+c.path("kubelet-config.yaml"),
		"--kubeconfig="+c.path("kubelet.kubeconfig"),
		"--root-dir="+KubeletDir,
		"--cert-dir="+c.path("pki", "kubelet-generated"),
		"--hostname-override="+c.NodeName,
		"--v=2",
	); err != nil {
		return err
	}
	return c.waitNodeReady(ctx)
}

func (c *Cluster) writeCNIConfig() error {
	conf := fmt.Sprintf(`{
  "cniVersion": "0.4.0",
  "name": "csi-qcow2-e2e",
  "plugins": [
    {
      "type": "bridge",
      "bridge": %q,
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": %q}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": %q
      }
    }
  ]
}
`, c.Bridge, podCIDR, c.path("cni", "ipam"))
	return os.WriteFile(c.path("cni", "net.d", "10-csi-qcow2-e2e.conflist"), []byte(conf), 0o644)
}

// SandboxImage is the pod sandbox (pause) image containerd is configured
// with; ImportImage must have imported it before pods can run.
const SandboxImage = "localhost/csi-qcow2-e2e-tool:v1"

func (c *Cluster) writeContainerdConfig() error {
	conf := fmt.Sprintf(`version = 2
root = %q
state = %q

[grpc]
  address = %q

[ttrpc]
  address = %q

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  # Root here lacks CAP_SYS_RESOURCE: never lower a container's score.
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %q
    conf_dir = %q
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = %q
`, c.path("containerd", "root"), c.path("containerd", "state"), c.ContainerdSocket, c.ContainerdSocket+".ttrpc",
		SandboxImage, c.cfg.CNIBinDir, c.path("cni", "net.d"), c.path("containerd", "runc"))
	return os.WriteFile(c.path("containerd", "config.toml"), []byte(conf), 0o644)
}

func (c *Cluster) writeKubeletConfig(p *pki, port, healthz int) error {
	conf := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
port: %d
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: %d
tlsCertFile: %q
tlsPrivateKeyFile: %q
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: %q
authorization:
  mode: Webhook
cgroupDriver: cgroupfs
# This host has cgroup v1 (hybrid); kubelets from 1.35 refuse it by default.
failCgroupV1: false
cgroupRoot: %q
containerRuntimeEndpoint: unix://%s
imageServiceEndpoint: unix://%s
failSwapOn: false
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
podCIDR: %s
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1%%"
  nodefs.inodesFree: "1%%"
  imagefs.available: "1%%"
registerNode: true
# The kubelet grows a mounted volume (NodeExpandVolume) in a running pod's
# periodic sync, every syncFrequency (default 1m): every online expansion
# waited most of a minute for it. The calls are the same, sooner.
syncFrequency: 10s
# No KUBE-FIREWALL, KUBE-IPTABLES-HINT or KUBE-KUBELET-CANARY chains: they
# would outlive the cluster, and nothing here needs them.
makeIPTablesUtilChains: false
podLogsDir: %q
`, port, healthz, p.path("kubelet.crt"), p.path("kubelet.key"), p.path("ca.crt"), c.CgroupRoot,
		c.ContainerdSocket, c.ContainerdSocket, podCIDR, c.path("pod-logs"))
	return os.WriteFile(c.path("kubelet-config.yaml"), []byte(conf), 0o644)
}

// spawn starts a component in its own process group with its output in
// Root/logs/name.log.
func (c *Cluster) spawn(name, bin string, args ...string) error {
	log, err := os.Create(c.path("logs", name+".log"))
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.Dir = c.Root
	// Pdeathsig: if the harness dies without tearing down, so do these.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		log.Close()
		return fmt.Errorf("start %s: %w", name, err)
	}
	pr := &proc{name: name, cmd: cmd, log: log, done: make(chan struct{})}
	go func() {
		pr.err = cmd.Wait()
		close(pr.done)
	}()
	c.procs = append(c.procs, pr)
	c.logf("started %s (pid %d, log %s)", name, cmd.Process.Pid, log.Name())
	return c.writePIDs()
}

func (c *Cluster) writePIDs() error {
	var b strings.Builder
	for _, p := range c.procs {
		fmt.Fprintf(&b, "%d %s\n", p.cmd.Process.Pid, p.name)
	}
	return os.WriteFile(c.path("pids"), []byte(b.String()), 0o644)
}

// PIDs returns the process id of every component started, by name.
func (c *Cluster) PIDs() map[string]int {
	m := map[string]int{}
	for _, p := range c.procs {
		m[p.name] = p.cmd.Process.Pid
	}
	return m
}

// exited reports a component that has died, if any.
func (c *Cluster) exited() error {
	for _, p := range c.procs {
		select {
		case <-p.done:
			return fmt.Errorf("%s exited: %v (log %s)", p.name, p.err, p.log.Name())
		default:
		}
	}
	return nil
}

func (c *Cluster) poll(ctx context.Context, what string, timeout time.Duration, f func() (bool, error)) error {
	start := time.Now()
	deadline := start.Add(timeout)
	var last error
	for {
		ok, err := f()
		if ok {
			c.logf("%s after %.1f s", what, time.Since(start).Seconds())
			return nil
		}
		last = err
		if err := c.exited(); err != nil {
			return fmt.Errorf("waiting for %s: %w", what, err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v waiting for %s (last: %v)", timeout, what, last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (c *Cluster) waitHTTP(ctx context.Context, what, url string, timeout time.Duration) error {
	return c.poll(ctx, what+" healthy", timeout, func() (bool, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return false, err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false, err
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return false, fmt.Errorf("%s: %s", resp.Status, body)
		}
		return true, nil
	})
}

func (c *Cluster) waitSocket(ctx context.Context, what, path string, timeout time.Duration) error {
	return c.poll(ctx, what+" listening", timeout, func() (bool, error) {
		conn, err := net.Dial("unix", path)
		if err != nil {
			return false, err
		}
		conn.Close()
		return true, nil
	})
}

// restConfig is the admin kubeconfig's client configuration.
func (c *Cluster) restConfig() (*rest.Config, error) {
	return clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
}

func (c *Cluster) waitClient(ctx context.Context) error {
	rc, err := c.restConfig()
	if err != nil {
		return err
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	c.Client = cs
	return c.poll(ctx, "kube-apiserver ready", 2*time.Minute, func() (bool, error) {
		body, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err != nil {
			return false, fmt.Errorf("%v: %s", err, body)
		}
		return true, nil
	})
}

func (c *Cluster) waitNodeReady(ctx context.Context) error {
	return c.poll(ctx, "node "+c.NodeName+" Ready", c.cfg.ReadyTimeout, func() (bool, error) {
		n, err := c.Client.CoreV1().Nodes().Get(ctx, c.NodeName, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, cond := range n.Status.Conditions {
			if cond.Type == corev1.NodeReady {
				if cond.Status == corev1.ConditionTrue {
					return true, nil
				}
				return false, fmt.Errorf("Ready=%s: %s", cond.Status, cond.Message)
			}
		}
		return false, errors.New("no Ready condition yet")
	})
}
