package driver

import (
	"context"
	"fmt"
	"runtime/debug"
	"time"

	"github.com/kubernetes-csi/csi-lib-utils/protosanitizer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
)

// intercept logs every call with its secrets stripped, counts it, and
// turns a panic into an Internal error for that call alone.
func (d *Driver) intercept(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	start := time.Now()
	klog.V(4).InfoS("CSI call", "method", info.FullMethod, "request", protosanitizer.StripSecrets(req))
	defer func() {
		if p := recover(); p != nil {
			klog.ErrorS(fmt.Errorf("%v", p), "CSI call panicked", "method", info.FullMethod, "stack", string(debug.Stack()))
			resp, err = nil, status.Errorf(codes.Internal, "%s failed: internal error: %v", info.FullMethod, p)
		}
		took := time.Since(start)
		d.metrics.record(info.FullMethod, err, took)
		if err != nil {
			klog.V(2).InfoS("CSI call failed", "method", info.FullMethod, "code", status.Code(err), "error", status.Convert(err).Message(), "took", took)
			return
		}
		klog.V(4).InfoS("CSI call done", "method", info.FullMethod, "response", protosanitizer.StripSecrets(resp), "took", took)
	}()
	return handler(ctx, req)
}
