package main

import "testing"

func TestPathCombine(t *testing.T) {
	for _, c := range [][3]string{
		{"top.qcow2", "base.qcow2", "base.qcow2"},
		{"/a/b/top.qcow2", "base.qcow2", "/a/b/base.qcow2"},
		{"a/top.qcow2", "../base", "a/../base"},
		{"/a/top.qcow2", "/x/base", "/x/base"},
	} {
		if got := pathCombine(c[0], c[1]); got != c[2] {
			t.Errorf("pathCombine(%q, %q) = %q, want %q", c[0], c[1], got, c[2])
		}
	}
}
