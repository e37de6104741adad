package main

import (
	"strings"
	"testing"
)

// The key orders below are what qemu-img 7.2 printed for check and info.
func TestQdictOrder(t *testing.T) {
	d := newQdict()
	for _, k := range []string{"filename", "format", "check-errors", "image-end-offset", "leaks", "total-clusters", "allocated-clusters"} {
		d.set(k, int64(0))
	}
	want := "image-end-offset total-clusters check-errors leaks allocated-clusters filename format"
	if got := strings.Join(d.ordered(), " "); got != want {
		t.Errorf("check order:\n got %s\nwant %s", got, want)
	}
	d = newQdict()
	for _, k := range []string{"filename", "format", "dirty-flag", "actual-size", "virtual-size", "cluster-size",
		"backing-filename", "full-backing-filename", "backing-filename-format", "format-specific"} {
		d.set(k, int64(0))
	}
	want = "backing-filename-format virtual-size filename cluster-size format actual-size format-specific full-backing-filename backing-filename dirty-flag"
	if got := strings.Join(d.ordered(), " "); got != want {
		t.Errorf("info order:\n got %s\nwant %s", got, want)
	}
}

func TestQJSON(t *testing.T) {
	d := newQdict().set("type", "qcow2").set("data", newQdict().set("compat", "1.1").set("corrupt", false))
	want := "{\n    \"type\": \"qcow2\",\n    \"data\": {\n        \"compat\": \"1.1\",\n        \"corrupt\": false\n    }\n}"
	if got := qjson(d); got != want {
		t.Errorf("qjson:\n%s\nwant\n%s", got, want)
	}
	// qemu-img 7.2 prints a disabled bitmap's empty flags as "[\n ... ]".
	if got := qjson([]qval{}); got != "[\n]" {
		t.Errorf("empty list: %s", got)
	}
	if got := qjsonString("a\"\\\n\x01é😀"); got != `"a\"\\\n\u0001\u00E9\uD83D\uDE00"` {
		t.Errorf("qjsonString: %s", got)
	}
}
