package driver

import (
	"fmt"
	"net"

	"k8s.io/klog/v2"

	"github.com/csi-qcow2/csi-qcow2/pkg/nbdattach"
)

// nbdPath attaches a volume to a kernel nbd device through netlink, with
// the volume ID as the device's backend identifier, served by this
// process over socketpairs (pkg/nbdattach).
type nbdPath struct{}

func (nbdPath) name() string { return attachNBD }

func (nbdPath) attach(id string, b nbdattach.Backend) (device, error) {
	logf := func(format string, args ...any) {
		klog.InfoS(fmt.Sprintf(format, args...), "component", "nbd", "volume", id)
	}
	srv := nbdattach.NewServer(nbdattach.Options{Logf: logf})
	if err := srv.AddExport(&nbdattach.Export{Backend: b}); err != nil {
		srv.Close()
		return nil, err
	}
	att, err := nbdattach.Attach(nbdattach.AttachOptions{
		BackendID: id,
		Size:      uint64(b.Size()),
		Flags:     nbdattach.ExportFlags(b),
		Logf:      logf,
	}, func(c net.Conn) error { return srv.ServeTransmission(c, "") })
	if err != nil {
		srv.Close()
		return nil, err
	}
	if att.Reattached {
		logf("re-adopted %s", att.Path)
	}
	return &nbdDevice{att: att, srv: srv, b: b}, nil
}

type nbdDevice struct {
	att *nbdattach.Attachment
	srv *nbdattach.Server
	b   nbdattach.Backend
}

func (n *nbdDevice) Path() string { return n.att.Path }

// Resize follows the backend, which the store grew: the server's export
// first (requests up to the new end are accepted), then the kernel's
// device (netlink RECONFIGURE).
func (n *nbdDevice) Resize() error {
	size := n.b.Size()
	if err := n.srv.ResizeExport("", size); err != nil {
		return err
	}
	return n.att.Resize(uint64(size))
}

// Detach disconnects the device, waits for its connections to end and
// stops the server.
func (n *nbdDevice) Detach() error {
	err := n.att.Detach()
	n.srv.Close()
	return err
}
