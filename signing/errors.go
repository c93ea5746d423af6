package signing

import "errors"

// Errors a verification or a key file can give; callers branch on them
// with errors.Is.
var (
	// ErrUnsigned: the payload carries no signature, and keys are trusted.
	ErrUnsigned = errors.New("not signed")
	// ErrUntrustedKey: the signature names a key that is not trusted.
	ErrUntrustedKey = errors.New("signed by a key that is not trusted")
	// ErrBadSignature: the signature does not verify with the key it names
	// (the payload changed after signing, or the signature is damaged).
	ErrBadSignature = errors.New("signature does not verify")
	// ErrKeyFile: a key file is not the PEM ed25519 key it should be.
	ErrKeyFile = errors.New("not an ed25519 key file")
)

// IsRefusal reports whether err is a refusal by a Verifier: unsigned,
// signed by a key not trusted, or a signature that does not verify.
func IsRefusal(err error) bool {
	return errors.Is(err, ErrUnsigned) || errors.Is(err, ErrUntrustedKey) || errors.Is(err, ErrBadSignature)
}
