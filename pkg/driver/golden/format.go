package golden

import (
	"bytes"
	"encoding/binary"
	"io"
	"os"
)

// Source formats, as Info.SourceFormat names them.
const (
	FormatQcow2 = "qcow2"
	FormatRaw   = "raw"
)

// foreign are image formats that are refused by their magic at offset 0:
// read as raw, they would give the guest a disk of container metadata.
var foreign = []struct {
	magic []byte
	name  string
}{
	{[]byte("KDMV"), "VMDK"},
	{[]byte("# Disk DescriptorFile"), "VMDK (descriptor)"},
	{[]byte("vhdxfile"), "VHDX"},
	{[]byte("conectix"), "VHD (dynamic)"},
	{[]byte("QED\x00"), "QED"},
}

// vdiMagic is VirtualBox's image signature, at offset 0x40.
const vdiMagic = 0xbeda107f

// probeFormat decides what the fetched content in f (size bytes) is, by
// its content: qcow2 by the magic (the engine then judges the rest),
// refused if it is another image format, else raw, which must be a whole
// number of 512-byte sectors and not empty.
func probeFormat(f *os.File, size int64) (string, error) {
	head := make([]byte, min(size, 512))
	if _, err := f.ReadAt(head, 0); err != nil && err != io.EOF {
		return "", err
	}
	if len(head) >= 4 && binary.BigEndian.Uint32(head) == 0x514649fb {
		return FormatQcow2, nil
	}
	for _, m := range foreign {
		if bytes.HasPrefix(head, m.magic) {
			return "", invalidf("the content is a %s image; only qcow2 and raw images are imported", m.name)
		}
	}
	if len(head) >= 0x44 && binary.LittleEndian.Uint32(head[0x40:]) == vdiMagic {
		return "", invalidf("the content is a VDI image; only qcow2 and raw images are imported")
	}
	switch {
	case size == 0:
		return "", invalidf("the content is empty: not a disk image")
	case size%512 != 0:
		return "", invalidf("the content (%d bytes) is not a disk image: a raw image is a whole number of 512-byte sectors", size)
	}
	return FormatRaw, nil
}
