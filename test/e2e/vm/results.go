package vm

import (
	"strconv"
	"strings"
)

// Results is what the guest reported on its console.
type Results struct {
	// Status of each test that finished: "PASS" or "FAIL".
	Status map[string]string
	// Output holds the lines printed while each test ran (its own lines
	// and the kernel's).
	Output map[string][]string
	// Started lists tests in the order they started.
	Started []string
	// Done is true when the guest printed its final line.
	Done bool
	// Notes are "@@vm:" lines that are not results (failed insmod, ...).
	Notes []string
	// Console is every line.
	Console []string

	current string
}

func newResults() *Results {
	return &Results{Status: map[string]string{}, Output: map[string][]string{}}
}

func (r *Results) add(line string) {
	r.Console = append(r.Console, line)
	rest, ok := strings.CutPrefix(line, "@@vm: ")
	if !ok {
		if r.current != "" {
			r.Output[r.current] = append(r.Output[r.current], line)
		}
		return
	}
	fields := strings.Fields(rest)
	switch {
	case len(fields) == 1 && fields[0] == "done":
		r.Done = true
		r.current = ""
	case len(fields) >= 2 && fields[0] == "RUN":
		r.current = fields[1]
		r.Started = append(r.Started, fields[1])
	case len(fields) >= 2 && (fields[0] == "PASS" || fields[0] == "FAIL"):
		r.Status[fields[1]] = fields[0]
		r.Output[fields[1]] = append(r.Output[fields[1]], line)
		r.current = ""
	default:
		r.Notes = append(r.Notes, rest)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
