package driver

import (
	"context"
	"time"

	"k8s.io/klog/v2"

	"github.com/csi-qcow2/csi-qcow2/pkg/driver/store"
)

// scrub checks every volume's layers once after the store opens, one
// volume at a time, so that a layer a crash or the disk damaged shows in
// the volume's health (CheckFailed) before anyone reads it. It stops with
// ctx.
func (d *Driver) scrub(ctx context.Context, st *store.Store) {
	start := time.Now()
	vols := st.ListVolumes()
	abnormal := 0
	for _, v := range vols {
		cond, err := st.CheckVolume(ctx, v.ID)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			continue // deleted meanwhile
		}
		d.metrics.health(v.ID, cond)
		if cond.Abnormal {
			abnormal++
			klog.ErrorS(nil, "volume check failed", "volume", v.ID, "reason", cond.Reason, "message", cond.Message)
		}
	}
	klog.InfoS("volumes checked", "volumes", len(vols), "abnormal", abnormal, "took", time.Since(start))
}
