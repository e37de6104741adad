package cluster

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// The pods' network: the CNI bridge, made before the apiserver starts so
// that it can listen on the gateway address, and kube-proxy in nftables
// mode, which routes the kubernetes Service (10.0.0.1:443) to it. Pods
// reach the API as in any cluster (in-cluster config); nothing is routed
// beyond the host (no masquerading, no DNS).

// proxyTables are the nftables tables kube-proxy's nftables mode makes;
// Stop deletes them, since kube-proxy leaves them when it exits.
var proxyTables = [][2]string{{"ip", "kube-proxy"}, {"ip6", "kube-proxy"}}

func (c *Cluster) makeBridge() error {
	for _, t := range proxyTables {
		if nftTableExists(t) {
			return fmt.Errorf("nftables table %s %s exists: another kube-proxy runs on this host (one cluster at a time)", t[0], t[1])
		}
	}
	for _, args := range [][]string{
		{"link", "add", "name", c.Bridge, "type", "bridge"},
		{"addr", "add", gatewayPrefix, "dev", c.Bridge},
		{"link", "set", c.Bridge, "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	c.logf("bridge %s at %s", c.Bridge, gatewayPrefix)
	return nil
}

func (c *Cluster) startKubeProxy(healthz, metrics int) error {
	conf := fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clientConnection:
  kubeconfig: %q
hostnameOverride: %q
clusterCIDR: %q
healthzBindAddress: 127.0.0.1:%d
metricsBindAddress: 127.0.0.1:%d
# Zeros leave the host's conntrack settings alone (root here may not
# change them, and they would outlive the cluster).
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
  udpTimeout: 0s
  udpStreamTimeout: 0s
`, c.path("kube-proxy.kubeconfig"), c.NodeName, podCIDR, healthz, metrics)
	file := c.path("kube-proxy-config.yaml")
	c.proxyStarted = true
	if err := os.WriteFile(file, []byte(conf), 0o644); err != nil {
		return err
	}
	return c.spawn("kube-proxy", filepath.Join(c.cfg.BinDir, "kube-proxy"), "--config="+file, "--v=2")
}

func nftTableExists(t [2]string) bool {
	return exec.Command("nft", "list", "table", t[0], t[1]).Run() == nil
}

// sweepProxyTables deletes kube-proxy's tables (Start refused to run where
// they existed before).
func (c *Cluster) sweepProxyTables() []error {
	var errs []error
	for _, t := range proxyTables {
		if !nftTableExists(t) {
			continue
		}
		if out, err := exec.Command("nft", "delete", "table", t[0], t[1]).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("nft delete table %s %s: %v: %s", t[0], t[1], err, out))
		}
	}
	return errs
}

// ProxyTables lists kube-proxy's nftables tables that exist now (after Stop:
// none).
func ProxyTables() []string {
	var left []string
	for _, t := range proxyTables {
		if nftTableExists(t) {
			left = append(left, t[0]+" "+t[1])
		}
	}
	return left
}
