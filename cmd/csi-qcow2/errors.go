package main

import (
	"errors"
	"fmt"
	"io"
)

// exitError carries the process exit status a command wants. Msg, when not
// empty, is printed as "csi-qcow2 img: Msg" (qemu-img prints "qemu-img: ...").
type exitError struct {
	Code int
	Msg  string
}

func (e *exitError) Error() string { return e.Msg }

// failf returns an exitError with status 1, the status qemu-img uses for
// every ordinary failure.
func failf(format string, a ...any) error {
	return &exitError{Code: 1, Msg: fmt.Sprintf(format, a...)}
}

// exitWith returns an exitError that prints nothing: the command has
// already written its report and only the status is left to set.
func exitWith(code int) error { return &exitError{Code: code} }

// errPrefix starts every error line, like "qemu-img: " does for qemu-img.
const errPrefix = "csi-qcow2 img: "

// reportError prints err (if it has a message) and returns the exit status.
func reportError(stderr io.Writer, err error) int {
	if err == nil {
		return 0
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.Msg != "" {
			fmt.Fprintln(stderr, errPrefix+ee.Msg)
		}
		return ee.Code
	}
	// Errors from flag and argument parsing (cobra).
	fmt.Fprintln(stderr, errPrefix+err.Error())
	return 1
}
