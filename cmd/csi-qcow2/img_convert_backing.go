package main

// targetOpts merges -B/-F into the -o backing options and checks them
// and -n.
func (c *convertCmd) targetOpts(o *createOpts) error {
	if c.noCreate && c.compress {
		return failf("Compression (-c) is not supported with -n")
	}
	if c.backing != "" && o.backingFile != "" && c.backing != o.backingFile {
		return failf("-B and -o backing_file name different backing files")
	}
	if c.backingFmt != "" && o.backingFmt != "" && c.backingFmt != o.backingFmt {
		return failf("-F and -o backing_fmt name different formats")
	}
	if c.backing != "" {
		o.backingFile = c.backing
	}
	if c.backingFmt != "" {
		o.backingFmt = c.backingFmt
	}
	switch {
	case o.backingFile == "" && o.backingFmt != "":
		return failf("A backing format was given without a backing file (-B)")
	case o.backingFile == "":
		return nil
	case c.dstFmt != "qcow2":
		return failf("Backing file not supported for file format '%s'", c.dstFmt)
	case o.backingFmt == "":
		return failf("Use of backing file requires explicit backing format")
	case c.noCreate:
		return failf("-B cannot be used with -n: an existing output keeps its own backing file")
	case c.compress:
		return failf("Compression with a backing file (-B) is not supported")
	}
	return checkFormat(o.backingFmt)
}
