package golden

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// Redirects are followed between http and https, but one to another
// scheme or from https down to http is refused as the URL's mistake
// (ErrInvalid), not retried.
func TestImportRedirects(t *testing.T) {
	img := rawImage(1<<20, 5)
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/img":
			w.Write(img)
		case "/to-file":
			http.Redirect(w, r, "file:///etc/passwd", http.StatusFound)
		}
	}))
	defer plain.Close()
	secure := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/img":
			w.Write(img)
		case "/down":
			http.Redirect(w, r, plain.URL+"/img", http.StatusFound)
		case "/up":
			http.Redirect(w, r, "/img", http.StatusFound)
		}
	}))
	defer secure.Close()
	for _, tc := range []struct {
		name, url, want string
	}{
		{"to file:", plain.URL + "/to-file", "file"},
		{"https to http", secure.URL + "/down", "from https down to http"},
		{"within https", secure.URL + "/up", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			im := newImporter(t)
			im.Client = secure.Client()
			_, _, err := im.Import(context.Background(), Source{URL: tc.url, SHA256: sum(img)})
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("Import: %v", err)
			case tc.want != "" && (!errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("Import: %v, want ErrInvalid naming %q", err, tc.want)
			}
		})
	}
}
