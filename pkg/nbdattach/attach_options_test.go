package nbdattach

import (
	"strings"
	"testing"
)

func TestAttachOptionsValidate(t *testing.T) {
	good := AttachOptions{BackendID: "vol", Size: 1 << 20, Flags: tflagHasFlags}.withDefaults()
	if err := good.validate(); err != nil {
		t.Fatalf("valid options refused: %v", err)
	}
	if good.BlockSize != DefaultBlockSize || good.Connections != 1 || good.Timeout != DefaultTimeout ||
		good.DeadConnTimeout != DefaultDeadConnTimeout || good.deviceIndex() != -1 {
		t.Fatalf("defaults %+v", good)
	}
	bad := map[string]func(*AttachOptions){
		"no id":             func(o *AttachOptions) { o.BackendID = "" },
		"newline in id":     func(o *AttachOptions) { o.BackendID = "a\nb" },
		"long id":           func(o *AttachOptions) { o.BackendID = strings.Repeat("x", 300) },
		"block size 1000":   func(o *AttachOptions) { o.BlockSize = 1000 },
		"block size 8192":   func(o *AttachOptions) { o.BlockSize = 8192 },
		"size 0":            func(o *AttachOptions) { o.Size = 0 },
		"unaligned size":    func(o *AttachOptions) { o.Size = 1<<20 + 100 },
		"no HAS_FLAGS":      func(o *AttachOptions) { o.Flags = tflagSendFlush },
		"multi without MC":  func(o *AttachOptions) { o.Connections = 2 },
		"17 connections":    func(o *AttachOptions) { o.Connections = 17; o.Flags |= tflagMultiConn },
		"negative timeout":  func(o *AttachOptions) { o.Timeout = -1 },
		"not an nbd device": func(o *AttachOptions) { o.Device = "/dev/sda" },
	}
	for name, mutate := range bad {
		o := good
		mutate(&o)
		if err := o.validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	o := good
	o.Device, o.Connections, o.Flags = "/dev/nbd4", 4, tflagHasFlags|tflagMultiConn
	if err := o.validate(); err != nil || o.deviceIndex() != 4 {
		t.Errorf("nbd4 with 4 multi-conn connections: %v, index %d", err, o.deviceIndex())
	}
}
