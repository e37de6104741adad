// Command e2etool is the local cluster's only image: its pod sandbox
// (pause) and a busybox-like tool for smoke tests. A static binary,
// packed into localhost/csi-qcow2-e2e-tool:v1 by cluster.BuildToolImage.
//
//	e2etool            wait for SIGTERM or SIGINT, then exit 0 (pause)
//	e2etool echo ARGS  print ARGS and exit 0
//	e2etool exit N     exit with status N
//	e2etool api        GET /version through the kubernetes Service with the
//	                   pod's service account; print "apiserver VERSION"
package main

import (
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
)

func main() {
	if len(os.Args) < 2 || os.Args[1] == "pause" {
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
		<-ch
		return
	}
	switch os.Args[1] {
	case "echo":
		fmt.Println(strings.Join(os.Args[2:], " "))
	case "api":
		v, err := apiVersion()
		if err != nil {
			fmt.Fprintln(os.Stderr, "e2etool api:", err)
			os.Exit(1)
		}
		fmt.Println("apiserver", v)
	case "exit":
		n := 0
		if len(os.Args) > 2 {
			n, _ = strconv.Atoi(os.Args[2])
		}
		os.Exit(n)
	default:
		fmt.Fprintf(os.Stderr, "e2etool: unknown command %q\n", os.Args[1])
		os.Exit(2)
	}
}
