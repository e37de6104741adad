package golden

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"
)

// Timeouts of the default HTTP client. There is no bound on a whole
// download (images are large; the caller's context bounds it), but a
// server that stops sending is given up on after stallTimeout.
const (
	dialTimeout           = 30 * time.Second
	tlsHandshakeTimeout   = 30 * time.Second
	responseHeaderTimeout = time.Minute
	stallTimeout          = 2 * time.Minute
)

// defaultClient is the client of an Importer without one: the default
// transport's proxy and HTTP/2 settings with bounded dial, handshake and
// header waits.
var defaultClient = &http.Client{CheckRedirect: checkRedirect, Transport: &http.Transport{
	Proxy:                 http.ProxyFromEnvironment,
	DialContext:           (&net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}).DialContext,
	ForceAttemptHTTP2:     true,
	TLSHandshakeTimeout:   tlsHandshakeTimeout,
	ResponseHeaderTimeout: responseHeaderTimeout,
	ExpectContinueTimeout: time.Second,
	IdleConnTimeout:       90 * time.Second,
	MaxIdleConns:          16,
}}

// maxRedirects bounds a chain of redirects.
const maxRedirects = 10

// errRedirect marks a redirect the importer does not follow: to another
// scheme than http or https, from https down to http, or past
// maxRedirects. The URL is the request's mistake (ErrInvalid), not a
// failure a retry could mend.
var errRedirect = errors.New("redirect refused")

// checkRedirect follows http and https redirects, but never from https
// to http (the checksum guards the bytes, not who learns what is
// fetched) nor to any other scheme.
func checkRedirect(req *http.Request, via []*http.Request) error {
	switch {
	case len(via) >= maxRedirects:
		return fmt.Errorf("%w: more than %d redirects", errRedirect, maxRedirects)
	case req.URL.Scheme != "http" && req.URL.Scheme != "https":
		return fmt.Errorf("%w: to a %s: URL", errRedirect, req.URL.Scheme)
	case via[len(via)-1].URL.Scheme == "https" && req.URL.Scheme == "http":
		return fmt.Errorf("%w: from https down to http", errRedirect)
	}
	return nil
}

// errStalled is why a download was given up on: no byte for stallTimeout.
var errStalled = errors.New("the server sent nothing")

// openHTTP sends the GET for l and returns the body (and its length, -1
// if unknown) of a 200 answer. Other answers are errors: client errors
// (4xx but 408, 425, 429) wrap ErrInvalid, the rest are transient.
func (im *Importer) openHTTP(ctx context.Context, l location) (io.ReadCloser, int64, error) {
	rctx, cancel := context.WithCancelCause(ctx)
	b := &stallBody{ctx: ctx, rctx: rctx, cancel: cancel, stall: im.stallTimeout()}
	b.timer = time.AfterFunc(b.stall, func() { cancel(errStalled) })
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, l.url.String(), nil)
	if err != nil {
		b.Close()
		return nil, 0, invalidf("URL %s: %v", l.redacted(), err)
	}
	// The checksum is of the bytes the URL names: no transparent
	// decompression by the transport.
	req.Header.Set("Accept-Encoding", "identity")
	req.Header.Set("User-Agent", "csi-qcow2-golden-import")
	client := im.Client
	switch {
	case client == nil:
		client = defaultClient
	case client.CheckRedirect == nil:
		c := *client
		c.CheckRedirect = checkRedirect
		client = &c
	}
	resp, err := client.Do(req)
	if errors.Is(err, errRedirect) {
		b.Close()
		return nil, 0, invalidf("GET %s: %v", l.redacted(), err)
	}
	if err != nil {
		b.Close()
		return nil, 0, b.readErr(fmt.Errorf("GET %s: %w", l.redacted(), err))
	}
	b.body = resp.Body
	switch code := resp.StatusCode; {
	case code == http.StatusOK:
		return b, resp.ContentLength, nil
	case code >= 400 && code < 500 && code != http.StatusRequestTimeout && code != http.StatusTooEarly && code != http.StatusTooManyRequests:
		b.Close()
		return nil, 0, invalidf("GET %s: the server answered %s", l.redacted(), resp.Status)
	default:
		b.Close()
		return nil, 0, fmt.Errorf("GET %s: the server answered %s", l.redacted(), resp.Status)
	}
}

// stallBody is a response body whose request is cancelled when no byte
// arrives for stall.
type stallBody struct {
	ctx    context.Context // the caller's
	rctx   context.Context // the request's
	cancel context.CancelCauseFunc
	stall  time.Duration
	timer  *time.Timer
	body   io.ReadCloser
	once   sync.Once
}

func (b *stallBody) Read(p []byte) (int, error) {
	n, err := b.body.Read(p)
	if n > 0 {
		b.timer.Reset(b.stall)
	}
	if err != nil && err != io.EOF {
		err = b.readErr(err)
	}
	return n, err
}

// readErr names why a request failed: the caller's context, or a stall.
func (b *stallBody) readErr(err error) error {
	if cerr := b.ctx.Err(); cerr != nil {
		return cerr
	}
	if errors.Is(context.Cause(b.rctx), errStalled) {
		return fmt.Errorf("%w for %v", errStalled, b.stall)
	}
	return err
}

func (b *stallBody) Close() error {
	var err error
	b.once.Do(func() {
		b.timer.Stop()
		b.cancel(context.Canceled)
		if b.body != nil {
			err = b.body.Close()
		}
	})
	return err
}
