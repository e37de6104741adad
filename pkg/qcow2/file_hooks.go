package qcow2

import "path/filepath"

// fileHooks let a test put itself between the engine and the host files
// an Open or a Freeze opens by path, and the directory syncs of a Freeze:
// the fault-injection tests fail the k-th I/O of a workload through them.
type fileHooks struct {
	wrap    func(path string, f File) File
	syncDir func(dir string) error
}

// wrapFile returns f as the engine should use it.
func (o *Options) wrapFile(path string, f File) File {
	if o.io == nil || o.io.wrap == nil {
		return f
	}
	return o.io.wrap(path, f)
}

// syncDirOf makes the names in the directory holding path durable.
func (o *Options) syncDirOf(path string) error {
	dir := filepath.Dir(path)
	if o.io == nil || o.io.syncDir == nil {
		return syncDir(dir)
	}
	return o.io.syncDir(dir)
}

// unwrapper is a File that stands in front of another (a test's).
type unwrapper interface{ Unwrap() File }
