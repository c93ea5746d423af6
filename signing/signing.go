package signing

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
)

// Kind says what a signed payload is. It is part of what is signed.
type Kind string

// Kinds of payload.
const (
	// Document is a whole published map, as stored.
	Document Kind = "document"
	// Delta is the change from one version to the next, as announced and
	// logged.
	Delta Kind = "delta"
)

// domain starts every signed message, so that a signature made for
// nfsteer's maps means nothing anywhere else, and the reverse.
const domain = "nfsteer map signature v1\n"

// Signature is a signature over one payload and the ID of the key that
// made it. In JSON the signature is base64.
type Signature struct {
	Key string `json:"key"`
	Sig []byte `json:"sig"`
}

// KeyID names a public key: the first 8 bytes of its SHA-256, in hex.
func KeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:8])
}

// message is what a signature covers: the domain, the kind and the
// payload's SHA-256.
func message(kind Kind, payload []byte) []byte {
	sum := sha256.Sum256(payload)
	m := make([]byte, 0, len(domain)+len(kind)+1+len(sum))
	m = append(m, domain...)
	m = append(m, kind...)
	m = append(m, '\n')
	return append(m, sum[:]...)
}

// Signer signs payloads with one private key. It is safe for concurrent
// use.
type Signer struct {
	key ed25519.PrivateKey
	id  string
}

// NewSigner returns a signer using key.
func NewSigner(key ed25519.PrivateKey) *Signer {
	return &Signer{key: key, id: KeyID(key.Public().(ed25519.PublicKey))}
}

// KeyID is the ID of the signer's public key.
func (s *Signer) KeyID() string { return s.id }

// Sign signs payload as kind.
func (s *Signer) Sign(kind Kind, payload []byte) *Signature {
	return &Signature{Key: s.id, Sig: ed25519.Sign(s.key, message(kind, payload))}
}

// Verifier checks signatures against a set of trusted public keys (more
// than one while keys are rotated). It is safe for concurrent use; its
// keys do not change once it is made.
type Verifier struct {
	keys map[string]ed25519.PublicKey
}

// NewVerifier returns a verifier trusting keys. It returns nil if keys is
// empty: nothing is trusted, so nothing is checked.
func NewVerifier(keys ...ed25519.PublicKey) *Verifier {
	if len(keys) == 0 {
		return nil
	}
	v := &Verifier{keys: map[string]ed25519.PublicKey{}}
	for _, k := range keys {
		v.keys[KeyID(k)] = k
	}
	return v
}

// KeyIDs returns the IDs of the trusted keys, sorted.
func (v *Verifier) KeyIDs() []string {
	if v == nil {
		return nil
	}
	ids := make([]string, 0, len(v.keys))
	for id := range v.keys {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// Verify checks that sig is a trusted key's signature over payload as
// kind. A nil Verifier trusts no key and checks nothing: it returns nil.
// The error wraps ErrUnsigned, ErrUntrustedKey or ErrBadSignature and
// names the key.
func (v *Verifier) Verify(kind Kind, payload []byte, sig *Signature) error {
	if v == nil {
		return nil
	}
	if sig == nil {
		return fmt.Errorf("%s: %w (trusted keys: %s)", kind, ErrUnsigned, strings.Join(v.KeyIDs(), ", "))
	}
	k, ok := v.keys[sig.Key]
	if !ok {
		return fmt.Errorf("%s: key %q: %w (trusted keys: %s)", kind, sig.Key, ErrUntrustedKey, strings.Join(v.KeyIDs(), ", "))
	}
	if len(sig.Sig) != ed25519.SignatureSize {
		return fmt.Errorf("%s: key %s: %w: %d bytes, want %d", kind, sig.Key, ErrBadSignature, len(sig.Sig), ed25519.SignatureSize)
	}
	if !ed25519.Verify(k, message(kind, payload), sig.Sig) {
		return fmt.Errorf("%s: key %s: %w", kind, sig.Key, ErrBadSignature)
	}
	return nil
}
