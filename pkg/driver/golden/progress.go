package golden

import "time"

// Phases of an import, as Progress.Phase names them.
const (
	PhaseDownload = "download" // bytes fetched (Total: the length the source announced, 0 if none)
	PhaseConvert  = "convert"  // guest bytes copied into the new image (Total: its virtual size)
)

// Progress is how an import goes, for the caller to log.
type Progress struct {
	SHA256 string
	URL    string // without a password
	Phase  string
	// Done of Total bytes (Total 0: unknown); BytesPerSecond is Done over
	// the phase's time so far.
	Done, Total    int64
	BytesPerSecond float64
	// Final: the phase is over (its last call).
	Final bool
}

// progressInterval is how often a phase reports at most, besides its end.
const progressInterval = time.Second

// reporter sends one import's Progress, at most once per
// progressInterval per phase and at each phase's end.
type reporter struct {
	fn    func(Progress) // nil: none
	base  Progress
	start time.Time
	last  time.Time
	now   func() time.Time
}

func newReporter(fn func(Progress), sha, url string, now func() time.Time) *reporter {
	return &reporter{fn: fn, base: Progress{SHA256: sha, URL: url}, now: now}
}

// phase starts a phase of total bytes (0: unknown).
func (r *reporter) phase(name string, total int64) {
	t := r.now()
	r.base.Phase, r.base.Total, r.start, r.last = name, total, t, t
}

// update reports done bytes if progressInterval has passed since the last
// report.
func (r *reporter) update(done int64) {
	if r.fn == nil {
		return
	}
	if t := r.now(); t.Sub(r.last) >= progressInterval {
		r.last = t
		r.send(done, false, t)
	}
}

// end reports the phase's last count.
func (r *reporter) end(done int64) {
	if r.fn != nil {
		r.send(done, true, r.now())
	}
}

func (r *reporter) send(done int64, final bool, t time.Time) {
	p := r.base
	p.Done, p.Final = done, final
	if d := t.Sub(r.start).Seconds(); d > 0 {
		p.BytesPerSecond = float64(done) / d
	}
	r.fn(p)
}
