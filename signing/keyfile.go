package signing

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
)

// ParsePrivateKey decodes a PEM "PRIVATE KEY" block holding a PKCS #8
// ed25519 key. Anything else (another key type, other PEM blocks, bytes
// after the block) is an error wrapping ErrKeyFile.
func ParsePrivateKey(b []byte) (ed25519.PrivateKey, error) {
	der, err := pemBlock(b, "PRIVATE KEY")
	if err != nil {
		return nil, err
	}
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrKeyFile, err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%w: a %T, not ed25519", ErrKeyFile, k)
	}
	return priv, nil
}

// ParsePublicKey decodes a PEM "PUBLIC KEY" block holding a PKIX ed25519
// key. Anything else is an error wrapping ErrKeyFile.
func ParsePublicKey(b []byte) (ed25519.PublicKey, error) {
	der, err := pemBlock(b, "PUBLIC KEY")
	if err != nil {
		return nil, err
	}
	k, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrKeyFile, err)
	}
	pub, ok := k.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("%w: a %T, not ed25519", ErrKeyFile, k)
	}
	return pub, nil
}

// pemBlock returns the bytes of the one PEM block of type typ in b.
func pemBlock(b []byte, typ string) ([]byte, error) {
	blk, rest := pem.Decode(b)
	switch {
	case blk == nil:
		return nil, fmt.Errorf("%w: no PEM block", ErrKeyFile)
	case blk.Type != typ:
		return nil, fmt.Errorf("%w: a PEM %q block, want %q", ErrKeyFile, blk.Type, typ)
	case len(blk.Headers) != 0:
		return nil, fmt.Errorf("%w: PEM headers (an encrypted key?)", ErrKeyFile)
	case len(bytes.TrimSpace(rest)) != 0:
		return nil, fmt.Errorf("%w: data after the PEM block", ErrKeyFile)
	}
	return blk.Bytes, nil
}

// LoadSigner reads a private key file and returns its signer.
func LoadSigner(path string) (*Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading signing key: %w", err)
	}
	k, err := ParsePrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("signing key %s: %w", path, err)
	}
	return NewSigner(k), nil
}

// LoadVerifier reads public key files and returns a verifier trusting
// them all (nil if paths is empty).
func LoadVerifier(paths ...string) (*Verifier, error) {
	var keys []ed25519.PublicKey
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("reading trusted key: %w", err)
		}
		k, err := ParsePublicKey(b)
		if err != nil {
			return nil, fmt.Errorf("trusted key %s: %w", p, err)
		}
		keys = append(keys, k)
	}
	return NewVerifier(keys...), nil
}

// GenerateKey makes a new key pair: the private key goes to out (mode
// 0600), the public key to out+".pub" (mode 0644). Neither file may exist
// already: a key is never written over. It returns the new key's ID.
func GenerateKey(out string) (string, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return "", fmt.Errorf("generating a key: %w", err)
	}
	privDER, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return "", fmt.Errorf("encoding the private key: %w", err)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("encoding the public key: %w", err)
	}
	for _, p := range []string{out, out + ".pub"} {
		if _, err := os.Lstat(p); err == nil {
			return "", fmt.Errorf("writing key: %s: %w", p, os.ErrExist)
		} else if !errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("writing key: %w", err)
		}
	}
	if err := writeNew(out, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: privDER}), 0o600); err != nil {
		return "", err
	}
	if err := writeNew(out+".pub", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o644); err != nil {
		os.Remove(out) // no private key without its public half
		return "", err
	}
	return KeyID(pub), nil
}

// writeNew writes b to a file that must not exist, with mode perm.
func writeNew(path string, b []byte, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return fmt.Errorf("writing key: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("writing key %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return fmt.Errorf("writing key %s: %w", path, err)
	}
	return nil
}

// Kinds of key file, as IdentifyKeyFile names them.
const (
	KindPrivate = "private key" // signs map versions
	KindPublic  = "public key"  // verifies them
	KindSession = "session key" // seals session records
)

// IdentifyKeyFile reads the key file at path and returns what it holds
// (KindPrivate, KindPublic or KindSession) and the key's ID: the one
// signatures name for an ed25519 key, public or private (KeyID of the
// public key), and the one heartbeats name for a session key
// (SessionKey.ID). It is how an operator matches a file to what `nfsteer
// status` and the logs show.
func IdentifyKeyFile(path string) (kind, id string, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", "", fmt.Errorf("reading key: %w", err)
	}
	if kind, id, err = IdentifyKey(b); err != nil {
		return "", "", fmt.Errorf("key %s: %w", path, err)
	}
	return kind, id, nil
}

// IdentifyKey is IdentifyKeyFile for the bytes of a key file. What is not
// a key of one of the three kinds is an error wrapping ErrKeyFile.
func IdentifyKey(b []byte) (kind, id string, err error) {
	switch {
	case bytes.HasPrefix(bytes.TrimSpace(b), []byte("-----BEGIN PUBLIC KEY")):
		pub, err := ParsePublicKey(b)
		if err != nil {
			return "", "", err
		}
		return KindPublic, KeyID(pub), nil
	case bytes.HasPrefix(bytes.TrimSpace(b), []byte("-----BEGIN")):
		priv, err := ParsePrivateKey(b)
		if err != nil {
			return "", "", err
		}
		return KindPrivate, KeyID(priv.Public().(ed25519.PublicKey)), nil
	}
	k, err := ParseSessionKey(b)
	if err != nil {
		return "", "", err
	}
	return KindSession, k.ID(), nil
}
