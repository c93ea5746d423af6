package store_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nfsteer/nfsteer/internal/labmap"
	"github.com/nfsteer/nfsteer/signing"
	"github.com/nfsteer/nfsteer/steering"
	"github.com/nfsteer/nfsteer/store"
	"github.com/nfsteer/nfsteer/tests/redislab"
	"github.com/redis/go-redis/v9"
)

func newSigner(t testing.TB) (*signing.Signer, ed25519.PublicKey) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return signing.NewSigner(priv), pub
}

func drainChange(name string) store.Change {
	return func(p *steering.Published) (*steering.Published, error) { return p.Drain(name) }
}

// TestSignedMaps: a store that trusts keys reads the versions they
// signed (the document and the deltas logged after it, from an operator
// and from the controller, each with its own key) and refuses, naming
// why, every version that another key or no key signed, and every
// signature moved, damaged or cut. Each case tampers with a Redis of its
// own, after the operator published the lab map and one drain.
func TestSignedMaps(t *testing.T) {
	ops, opsPub := newSigner(t)
	ctl, ctlPub := newSigner(t)
	stranger, _ := newSigner(t)
	trust := signing.NewVerifier(opsPub, ctlPub)
	ctx := context.Background()
	// sigOf returns log entry i's signature; setSig rewrites entry i with
	// sig. The delta's bytes are kept as they are.
	entry := func(c redis.UniversalClient, i int64) (map[string]json.RawMessage, error) {
		e, err := c.LIndex(ctx, "nfsteer:{map}:log", i).Result()
		if err != nil {
			return nil, err
		}
		var a map[string]json.RawMessage
		return a, json.Unmarshal([]byte(e), &a)
	}
	sigOf := func(c redis.UniversalClient, i int64) (json.RawMessage, error) {
		a, err := entry(c, i)
		return a["sig"], err
	}
	setSig := func(c redis.UniversalClient, i int64, sig json.RawMessage) error {
		a, err := entry(c, i)
		if err != nil {
			return err
		}
		a["sig"] = sig
		b, _ := json.Marshal(a)
		return c.LSet(ctx, "nfsteer:{map}:log", i, b).Err()
	}
	for _, tc := range []struct {
		name string
		// tamper acts on Redis through publishers signing with evil
		// (another key) and plain (none), and its client.
		tamper func(evil, plain *store.Store, c redis.UniversalClient) error
		want   error
		says   string
		// trusted is what the newest version trusted keys signed has
		// drained, when it is not version 3 (fw-1 and fw-2).
		trusted []string
	}{
		{name: "signed by the operator and the controller", tamper: func(_, _ *store.Store, _ redis.UniversalClient) error { return nil }},
		{name: "an untrusted key appends a delta", want: signing.ErrUntrustedKey, says: "entry 2 of nfsteer:{map}:log",
			tamper: func(evil, _ *store.Store, _ redis.UniversalClient) error {
				_, err := evil.Publish(ctx, drainChange("dlp-1"))
				return err
			}},
		{name: "an unsigned delta", want: signing.ErrUnsigned, says: "entry 2 of nfsteer:{map}:log",
			tamper: func(_, plain *store.Store, _ redis.UniversalClient) error {
				_, err := plain.Publish(ctx, drainChange("dlp-1"))
				return err
			}},
		{name: "an unsigned document", want: signing.ErrUnsigned, says: "nfsteer:{map}:doc",
			tamper: func(_, plain *store.Store, _ redis.UniversalClient) error {
				_, err := plain.Publish(ctx, func(p *steering.Published) (*steering.Published, error) {
					m, err := p.Map.AddInstance("dlp", "dlp-3", steering.Addresses{"10.200.0.23", "fd00:200::23"})
					return p.WithMap(m), err
				})
				return err
			}},
		{name: "a document signed by an untrusted key", want: signing.ErrUntrustedKey, says: "nfsteer:{map}:doc",
			tamper: func(evil, _ *store.Store, _ redis.UniversalClient) error {
				_, err := evil.Publish(ctx, func(p *steering.Published) (*steering.Published, error) {
					m, err := p.Map.AddInstance("dlp", "dlp-3", steering.Addresses{"10.200.0.23", "fd00:200::23"})
					return p.WithMap(m), err
				})
				return err
			}},
		{name: "a trusted signature over another version", want: signing.ErrBadSignature, says: "entry 2 of nfsteer:{map}:log",
			tamper: func(evil, _ *store.Store, c redis.UniversalClient) error {
				if _, err := evil.Publish(ctx, drainChange("dlp-1")); err != nil {
					return err
				}
				first, err := sigOf(c, 0)
				if err != nil {
					return err
				}
				return setSig(c, 2, first)
			}},
		{name: "a truncated signature", want: signing.ErrBadSignature, says: "entry 1 of nfsteer:{map}:log", trusted: []string{"fw-2"},
			tamper: func(_, _ *store.Store, c redis.UniversalClient) error {
				sig, err := sigOf(c, 1)
				if err != nil {
					return err
				}
				var sg signing.Signature
				if err := json.Unmarshal(sig, &sg); err != nil {
					return err
				}
				sg.Sig = sg.Sig[:40]
				b, _ := json.Marshal(sg)
				return setSig(c, 1, b)
			}},
		{name: "the document's signature removed", want: signing.ErrUnsigned, says: "nfsteer:{map}:doc",
			tamper: func(_, _ *store.Store, c redis.UniversalClient) error {
				return c.Del(ctx, "nfsteer:{map}:sig").Err()
			}},
		{name: "the document's signature garbled", want: signing.ErrBadSignature, says: "nfsteer:{map}:sig",
			tamper: func(_, _ *store.Store, c redis.UniversalClient) error {
				return c.Set(ctx, "nfsteer:{map}:sig", "{not json", 0).Err()
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			url := redislab.Start(t, redislab.Options{}).URL
			op, controller, evil, plain, reader := open(t, url), open(t, url), open(t, url), open(t, url), open(t, url)
			op.SignWith(ops)
			controller.SignWith(ctl)
			evil.SignWith(stranger)
			reader.Trust(trust)
			if _, err := op.Publish(ctx, replace(labmap.Map(t))); err != nil {
				t.Fatal(err)
			}
			if _, err := op.Publish(ctx, drainChange("fw-2")); err != nil {
				t.Fatal(err)
			}
			if _, err := controller.Publish(ctx, drainChange("fw-1")); err != nil {
				t.Fatal(err)
			}
			held, err := reader.Live(ctx)
			if err != nil {
				t.Fatalf("reading the versions trusted keys signed: %v", err)
			}
			if held.Version != 3 {
				t.Fatalf("live version %d, want 3", held.Version)
			}
			if err := tc.tamper(evil, plain, store.ClientOf(op)); err != nil {
				t.Fatal(err)
			}
			_, err = reader.Live(ctx)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Live = %v", err)
				}
				return
			}
			if !errors.Is(err, tc.want) || !errors.Is(err, steering.ErrInvalidMap) || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("Live = %v; want ErrInvalidMap and %v, naming %s", err, tc.want, tc.says)
			}
			// A node that holds version 3 takes no later version either,
			// through the log or the document.
			if p, err := reader.LiveAfter(ctx, held); err == nil && p.Version != held.Version {
				t.Errorf("LiveAfter(version 3) took version %d", p.Version)
			}
			// An operator who signs and trusts recovers: the next version
			// is built on version 3, the last the trusted keys signed,
			// and written whole over the forgery, numbered after it.
			forgedVersion, err := reader.LiveVersion(ctx)
			if err != nil {
				t.Fatal(err)
			}
			recoverer := open(t, url)
			recoverer.SignWith(ops)
			recoverer.Trust(trust)
			// With the document itself forged there is nothing trusted to
			// build on: the operator applies the whole map again.
			docForged := strings.Contains(tc.says, "{map}:doc") || strings.Contains(tc.says, "{map}:sig")
			recovery, want := drainChange("dlp-2"), []string{"dlp-2", "fw-1", "fw-2"}
			if tc.trusted != nil {
				want = append([]string{"dlp-2"}, tc.trusted...)
			}
			if docForged {
				recovery, want = replace(labmap.Map(t)), nil
			}
			if _, err := recoverer.Publish(ctx, recovery); err != nil {
				t.Fatalf("publishing over the forgery: %v", err)
			}
			got, err := reader.Live(ctx)
			if err != nil {
				t.Fatalf("Live after the recovery: %v", err)
			}
			if got.Version != forgedVersion+1 || !slices.Equal(got.Drained, want) {
				t.Errorf("after the recovery: version %d, drained %v; want version %d, drained %v", got.Version, got.Drained, forgedVersion+1, want)
			}
			// A store that trusts nothing reads what it is given.
			if tc.says != "nfsteer:{map}:sig" {
				if _, err := plain.Live(ctx); err != nil {
					t.Errorf("Live without trusted keys = %v", err)
				}
			}
		})
	}
}

// TestWatchRefusesUntrustedDeltas: an announced delta that no trusted key
// signed reaches the watcher without its delta, with the reason; a signed
// one arrives whole.
func TestWatchRefusesUntrustedDeltas(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	url := redislab.Start(t, redislab.Options{}).URL
	ops, opsPub := newSigner(t)
	stranger, _ := newSigner(t)
	op, evil, watcher := open(t, url), open(t, url), open(t, url)
	op.SignWith(ops)
	evil.SignWith(stranger)
	watcher.Trust(signing.NewVerifier(opsPub))
	if _, err := op.Publish(ctx, replace(labmap.Map(t))); err != nil {
		t.Fatal(err)
	}
	got := make(chan store.Announcement, 100)
	done := make(chan error)
	go func() {
		done <- watcher.Watch(ctx, time.Hour, func(_ context.Context, a store.Announcement) {
			if a.Version != 0 {
				got <- a
			}
		})
	}()
	defer func() { cancel(); <-done }()
	// Wait for the subscription: publish until an announcement arrives.
	var a store.Announcement
	for i := 0; ; i++ {
		if _, err := op.Publish(ctx, drainChange([]string{"fw-1", "fw-2"}[i%2])); err != nil {
			t.Fatal(err)
		}
		select {
		case a = <-got:
		case <-time.After(100 * time.Millisecond):
			continue
		}
		break
	}
	if a.Delta == nil || a.Refused != nil {
		t.Fatalf("a delta the trusted key signed: delta %v, refused %v; want it whole", a.Delta, a.Refused)
	}
	p, err := evil.Publish(ctx, drainChange("dlp-1"))
	if err != nil {
		t.Fatal(err)
	}
	for a = <-got; a.Version != p.Version; a = <-got {
	}
	if a.Delta != nil || !errors.Is(a.Refused, signing.ErrUntrustedKey) {
		t.Fatalf("a delta an untrusted key signed: delta %v, refused %v; want no delta, ErrUntrustedKey", a.Delta, a.Refused)
	}
}
