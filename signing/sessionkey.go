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

// macSize is the size of a session MAC: HMAC-SHA256 cut to 128 bits.
const macSize = 16

// SessionKey is the fleet's key for the MACs on mirrored session records,
// which every node that writes or takes over sessions shares: a record in
// Redis that no holder of the key wrote is not trusted. It is safe for
// concurrent use.
type SessionKey struct{ k []byte }

// NewSessionKey returns the session key k (SessionKeySize bytes).
func NewSessionKey(k []byte) (*SessionKey, error) {
	if len(k) != SessionKeySize {
		return nil, fmt.Errorf("%w: a session key is %d bytes, got %d", ErrKeyFile, SessionKeySize, len(k))
	}
	return &SessionKey{k: append([]byte(nil), k...)}, nil
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
	return h.Sum(nil)[:macSize]
}

// Check reports whether mac is the MAC of parts.
func (k *SessionKey) Check(mac []byte, parts ...string) bool {
	return len(mac) == macSize && hmac.Equal(mac, k.MAC(parts...))
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

// GenerateSessionKey writes a new random session key to out (mode 0600),
// which must not exist.
func GenerateSessionKey(out string) error {
	k := make([]byte, SessionKeySize)
	if _, err := rand.Read(k); err != nil {
		return fmt.Errorf("generating a session key: %w", err)
	}
	return writeNew(out, []byte(hex.EncodeToString(k)+"\n"), 0o600) // O_EXCL: never over a file
}
