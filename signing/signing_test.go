package signing

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func newKey(t testing.TB) ed25519.PrivateKey {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestVerify: what a verifier accepts and what it refuses, and why.
func TestVerify(t *testing.T) {
	trusted, old, stranger := newKey(t), newKey(t), newKey(t)
	v := NewVerifier(trusted.Public().(ed25519.PublicKey), old.Public().(ed25519.PublicKey))
	payload := []byte(`{"version":7}`)
	good := NewSigner(trusted).Sign(Delta, payload)
	truncated := &Signature{Key: good.Key, Sig: good.Sig[:40]}
	flipped := &Signature{Key: good.Key, Sig: append([]byte(nil), good.Sig...)}
	flipped.Sig[3] ^= 1
	for _, tc := range []struct {
		name    string
		kind    Kind
		payload []byte
		sig     *Signature
		want    error
	}{
		{"signed by a trusted key", Delta, payload, good, nil},
		{"signed by the other trusted key (rotation)", Delta, payload, NewSigner(old).Sign(Delta, payload), nil},
		{"unsigned", Delta, payload, nil, ErrUnsigned},
		{"signed by an untrusted key", Delta, payload, NewSigner(stranger).Sign(Delta, payload), ErrUntrustedKey},
		{"a signature over another version", Delta, []byte(`{"version":8}`), good, ErrBadSignature},
		{"a delta's signature on a document", Document, payload, good, ErrBadSignature},
		{"a truncated signature", Delta, payload, truncated, ErrBadSignature},
		{"a damaged signature", Delta, payload, flipped, ErrBadSignature},
		{"an untrusted key claiming a trusted key's ID", Delta, payload, &Signature{Key: good.Key, Sig: NewSigner(stranger).Sign(Delta, payload).Sig}, ErrBadSignature},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := v.Verify(tc.kind, tc.payload, tc.sig)
			if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
				t.Errorf("Verify = %v, want %v", err, tc.want)
			}
		})
	}
	var none *Verifier
	if err := none.Verify(Delta, payload, nil); err != nil {
		t.Errorf("a nil verifier refused an unsigned payload: %v", err)
	}
}

// TestGenerateKey: the key pair is written with the right modes, loads
// back, signs and verifies, and is never written over.
func TestGenerateKey(t *testing.T) {
	out := filepath.Join(t.TempDir(), "ops.key")
	id, err := GenerateKey(out)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(out); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("private key %s: %v, %v; want mode 0600", out, st, err)
	}
	s, err := LoadSigner(out)
	if err != nil {
		t.Fatal(err)
	}
	v, err := LoadVerifier(out + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	if s.KeyID() != id || len(v.KeyIDs()) != 1 || v.KeyIDs()[0] != id {
		t.Errorf("key IDs: signer %s, verifier %v, generated %s", s.KeyID(), v.KeyIDs(), id)
	}
	if err := v.Verify(Document, []byte("map"), s.Sign(Document, []byte("map"))); err != nil {
		t.Errorf("a generated key's signature does not verify: %v", err)
	}
	before, _ := os.ReadFile(out)
	if _, err := GenerateKey(out); !errors.Is(err, os.ErrExist) {
		t.Errorf("GenerateKey over an existing key = %v, want os.ErrExist", err)
	}
	if after, _ := os.ReadFile(out); string(after) != string(before) {
		t.Error("GenerateKey wrote over an existing key")
	}
	if err := GenerateSessionKey(out); !errors.Is(err, os.ErrExist) {
		t.Errorf("GenerateSessionKey over an existing key = %v, want os.ErrExist", err)
	}
	// A private key is not a public one, and the reverse.
	if _, err := LoadVerifier(out); !errors.Is(err, ErrKeyFile) {
		t.Errorf("LoadVerifier(private key) = %v, want ErrKeyFile", err)
	}
	if _, err := LoadSigner(out + ".pub"); !errors.Is(err, ErrKeyFile) {
		t.Errorf("LoadSigner(public key) = %v, want ErrKeyFile", err)
	}
}

// FuzzParseKeys: no bytes panic the key file decoders; what they accept
// has the right size, and IdentifyKey names it as they read it.
func FuzzParseKeys(f *testing.F) {
	dir := f.TempDir()
	if _, err := GenerateKey(filepath.Join(dir, "k")); err != nil {
		f.Fatal(err)
	}
	priv, _ := os.ReadFile(filepath.Join(dir, "k"))
	pub, _ := os.ReadFile(filepath.Join(dir, "k.pub"))
	f.Add(priv)
	f.Add(pub)
	f.Add([]byte("-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n"))
	if err := GenerateSessionKey(filepath.Join(dir, "s")); err != nil {
		f.Fatal(err)
	}
	sess, _ := os.ReadFile(filepath.Join(dir, "s"))
	f.Add(sess)
	f.Fuzz(func(t *testing.T, b []byte) {
		if k, err := ParsePrivateKey(b); err == nil && len(k) != ed25519.PrivateKeySize {
			t.Fatalf("accepted a private key of %d bytes", len(k))
		}
		if k, err := ParsePublicKey(b); err == nil && len(k) != ed25519.PublicKeySize {
			t.Fatalf("accepted a public key of %d bytes", len(k))
		}
		sk, serr := ParseSessionKey(b)
		kind, id, err := IdentifyKey(b)
		switch {
		case err != nil && !errors.Is(err, ErrKeyFile):
			t.Fatalf("IdentifyKey: %v does not wrap ErrKeyFile", err)
		case err == nil && len(id) != 16:
			t.Fatalf("IdentifyKey: ID %q", id)
		case kind == KindSession && (serr != nil || sk.ID() != id):
			t.Fatalf("IdentifyKey named a session key %s that ParseSessionKey reads as %v, %v", id, sk, serr)
		}
	})
}
