// Command livenessprobe stands in for the kubernetes-csi livenessprobe
// sidecar in the local cluster, whose module the Go module proxy does not
// serve (build-sidecars.sh). Same job, same flags as the chart passes
// them: GET /healthz calls the driver's CSI Probe over --csi-address and
// answers 200 when the driver is ready, 500 when it is not or the call
// fails.
//
//	livenessprobe --csi-address=/csi/csi.sock --http-endpoint=:9809 [--probe-timeout=1s]
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
)

func main() {
	addr := flag.String("csi-address", "/run/csi/socket", "the CSI driver's unix socket")
	endpoint := flag.String("http-endpoint", "", "address of /healthz (host:port); overrides --health-port")
	port := flag.String("health-port", "9808", "port of /healthz on all addresses")
	timeout := flag.Duration("probe-timeout", time.Second, "timeout of one Probe call")
	flag.Int("v", 0, "log level (ignored)")
	flag.Parse()
	if *endpoint == "" {
		*endpoint = ":" + *port
	}
	target := *addr
	if !strings.Contains(target, "://") {
		target = "unix://" + target
	}
	// A restarted driver is found again within a second (gRPC's default
	// backoff grows to two minutes).
	bo := backoff.DefaultConfig
	bo.MaxDelay = time.Second
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: bo, MinConnectTimeout: time.Second}))
	if err != nil {
		log.Fatalf("livenessprobe: %v", err)
	}
	id := csi.NewIdentityClient(conn)
	http.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), *timeout)
		defer cancel()
		if err := probe(ctx, id); err != nil {
			log.Printf("livenessprobe: %v", err)
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	log.Printf("livenessprobe: serving /healthz on %s for %s", *endpoint, *addr)
	fmt.Fprintln(os.Stderr, http.ListenAndServe(*endpoint, nil))
	os.Exit(1)
}

func probe(ctx context.Context, id csi.IdentityClient) error {
	resp, err := id.Probe(ctx, &csi.ProbeRequest{})
	if err != nil {
		return fmt.Errorf("probe: %w", err)
	}
	if r := resp.GetReady(); r != nil && !r.GetValue() {
		return fmt.Errorf("driver not ready")
	}
	return nil
}
