package store_test

import (
	"context"
	"strings"
	"testing"

	"github.com/nfsteer/nfsteer/internal/labmap"
	"github.com/nfsteer/nfsteer/store"
	"github.com/nfsteer/nfsteer/tests/redislab"
)

// TestTLS: a TLS-only Redis that asks for client certificates (Debian's
// redis-server is built with TLS) is used through rediss:// with the CA
// and the client's certificate; what is wrong is refused before anything
// is read or written, with an error naming the address and the reason.
func TestTLS(t *testing.T) {
	ctx := context.Background()
	pki := redislab.NewPKI(t, "127.0.0.1")
	srv := redislab.Start(t, redislab.Options{TLS: pki})
	good := store.TLSFiles{CA: pki.CA, Cert: pki.ClientCert, Key: pki.ClientKey}

	s, err := store.Open(ctx, srv.URL, store.WithTLS(good))
	if err != nil {
		t.Fatalf("Open over TLS: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	if _, err := s.Publish(ctx, replace(labmap.Map(t))); err != nil {
		t.Fatalf("publishing over TLS: %v", err)
	}
	if _, err := s.Live(ctx); err != nil {
		t.Fatalf("reading over TLS: %v", err)
	}

	expired := redislab.Start(t, redislab.Options{TLS: pki, Expired: true})
	for _, tc := range []struct {
		name  string
		url   string
		files store.TLSFiles
		says  string
	}{
		{"a CA that did not sign the server's certificate", srv.URL, store.TLSFiles{CA: pki.OtherCA, Cert: pki.ClientCert, Key: pki.ClientKey}, "certificate signed by unknown authority"},
		{"the server's certificate expired", expired.URL, good, "expired"},
		{"no client certificate", srv.URL, store.TLSFiles{CA: pki.CA}, srv.Addr},
		{"a certificate without its key", srv.URL, store.TLSFiles{CA: pki.CA, Cert: pki.ClientCert}, "needs both"},
		{"a CA file that is no certificate", srv.URL, store.TLSFiles{CA: pki.ClientKey}, "holds no PEM certificate"},
		{"TLS files with a plain URL", "redis://" + srv.Addr, good, "not rediss://"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := store.Open(ctx, tc.url, store.WithTLS(tc.files))
			if err == nil {
				s.Close()
				t.Fatal("Open succeeded")
			}
			if !strings.Contains(err.Error(), tc.says) {
				t.Errorf("Open = %v; want it to say %q", err, tc.says)
			}
			if strings.HasPrefix(tc.url, "rediss") && !strings.Contains(tc.says, "needs both") && !strings.Contains(tc.says, "PEM") &&
				!strings.Contains(err.Error(), strings.TrimPrefix(tc.url, "rediss://")) {
				t.Errorf("Open = %v; want it to name the address", err)
			}
		})
	}
}
