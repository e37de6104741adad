package main

import (
	"strings"
	"testing"
)

func TestVersion(t *testing.T) {
	r := cli(t, "version")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "csi-qcow2 dev") {
		t.Errorf("version: exit %d, %q", r.code, r.stdout)
	}
}

func TestHelpNamesPolicy(t *testing.T) {
	for _, args := range [][]string{{"img", "--help"}, {"img", "info", "--help"}, {"img", "create", "--help"}} {
		r := cli(t, args...)
		if r.code != 0 || !strings.Contains(r.stdout, "AllowAnyPath") {
			t.Errorf("%v: exit %d, output does not explain the backing policy:\n%s", args, r.code, r.stdout)
		}
	}
}

func TestUnknownFlag(t *testing.T) {
	r := cli(t, "img", "info", "--bogus", "x")
	if r.code != 1 || !strings.HasPrefix(r.stderr, errPrefix) {
		t.Errorf("exit %d, stderr %q", r.code, r.stderr)
	}
}
