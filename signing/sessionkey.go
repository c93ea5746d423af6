package signing

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
)

// SessionKeySize is the size of a session key, in bytes.
const SessionKeySize = 32

// SessionMACSize is the size of a session MAC: HMAC-SHA256 cut to 128
// bits.
const SessionMACSize = 16

// SessionKey is the fleet's key for the MACs on mirrored session records,
// which every node that writes or takes over sessions shares: a record in
// Redis that no holder of the key wrote is not trusted. It is safe for
// concurrent use.
type SessionKey struct {
	k  []byte
	id string // ID, made once
}

// NewSessionKey returns the session key k (SessionKeySize bytes).
func NewSessionKey(k []byte) (*SessionKey, error) {
	if len(k) != SessionKeySize {
		return nil, fmt.Errorf("%w: a session key is %d bytes, got %d", ErrKeyFile, SessionKeySize, len(k))
	}
	return newSessionKey(append([]byte(nil), k...)), nil
}

func newSessionKey(k []byte) *SessionKey {
	sk := &SessionKey{k: k}
	sk.id = hex.EncodeToString(sk.MAC("nfsteer session key id")[:8])
	return sk
}

// MAC returns the MAC of parts, each length-prefixed so that no two lists
// of parts give the same message.
func (k *SessionKey) MAC(parts ...string) []byte {
	h := hmac.New(sha256.New, k.k)
	var n [4]byte
	for _, p := range parts {
		binary.BigEndian.PutUint32(n[:], uint32(len(p)))
		h.Write(n[:])
		h.Write([]byte(p))
	}
	return h.Sum(nil)[:SessionMACSize]
}

// Check reports whether mac is the MAC of parts.
func (k *SessionKey) Check(mac []byte, parts ...string) bool {
	return len(mac) == SessionMACSize && hmac.Equal(mac, k.MAC(parts...))
}

// ParseSessionKey decodes a session key file: the key in hex, alone on
// its line.
func ParseSessionKey(b []byte) (*SessionKey, error) {
	k, err := hex.DecodeString(strings.TrimSpace(string(b)))
	if err != nil {
		return nil, fmt.Errorf("%w: a session key is %d bytes in hex: %v", ErrKeyFile, SessionKeySize, err)
	}
	return NewSessionKey(k)
}

// LoadSessionKey reads a session key file.
func LoadSessionKey(path string) (*SessionKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading session key: %w", err)
	}
	k, err := ParseSessionKey(b)
	if err != nil {
		return nil, fmt.Errorf("session key %s: %w", path, err)
	}
	return k, nil
}

// NewRandomSessionKey returns a new random session key.
func NewRandomSessionKey() (*SessionKey, error) {
	k := make([]byte, SessionKeySize)
	if _, err := rand.Read(k); err != nil {
		return nil, fmt.Errorf("generating a session key: %w", err)
	}
	return newSessionKey(k), nil
}

// GenerateSessionKey writes a new random session key to out (mode 0600),
// which must not exist.
func GenerateSessionKey(out string) error {
	k, err := NewRandomSessionKey()
	if err != nil {
		return err
	}
	return writeNew(out, []byte(hex.EncodeToString(k.k)+"\n"), 0o600) // O_EXCL: never over a file
}

// ID names k without revealing it: the first 8 bytes of its MAC of a
// fixed label, in hex. Heartbeats carry it, so that an operator can tell
// which keys each node seals with and trusts.
func (k *SessionKey) ID() string { return k.id }

// SessionKeys are the session keys of a node: the one it seals what it
// writes with, and those whose seals it trusts besides, so that a fleet
// can start sealing, or change keys, one node at a time without a node
// refusing another's records (a failover between them would break the
// flow). The zero value seals nothing and checks nothing.
type SessionKeys struct {
	// Seal seals what the node writes (nil: nothing).
	Seal *SessionKey
	// Accept are keys whose seals are trusted too: the next key while it
	// is given to every node, the previous one while records it sealed
	// may still be read.
	Accept []*SessionKey
	// Unsealed trusts records without a MAC too, while a fleet starts
	// sealing. Without Seal, unsealed records are trusted anyway: the
	// node writes them itself.
	Unsealed bool
}

// Checks reports whether the node checks the seals of what it reads:
// it holds a key. A node that holds none reads records as they are, and
// cannot read a sealed function state.
func (ks SessionKeys) Checks() bool { return ks.Seal != nil || len(ks.Accept) > 0 }

// TrustsUnsealed reports whether records without a MAC are trusted.
func (ks SessionKeys) TrustsUnsealed() bool { return ks.Seal == nil || ks.Unsealed }

// Trusted returns the keys whose seals are trusted, the sealing key
// first, each once.
func (ks SessionKeys) Trusted() []*SessionKey {
	var out []*SessionKey
	seen := map[string]bool{}
	for _, k := range append([]*SessionKey{ks.Seal}, ks.Accept...) {
		if k != nil && !seen[k.ID()] {
			seen[k.ID()] = true
			out = append(out, k)
		}
	}
	return out
}

// IDs returns the IDs of the Trusted keys.
func (ks SessionKeys) IDs() []string {
	var ids []string
	for _, k := range ks.Trusted() {
		ids = append(ids, k.ID())
	}
	return ids
}

// Check reports whether mac is the MAC of parts under a trusted key.
func (ks SessionKeys) Check(mac []byte, parts ...string) bool {
	if ks.Seal != nil && ks.Seal.Check(mac, parts...) {
		return true
	}
	for _, k := range ks.Accept {
		if k.Check(mac, parts...) {
			return true
		}
	}
	return false
}
