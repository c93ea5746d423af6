package keytest

import (
	"testing"

	"github.com/nfsteer/nfsteer/signing"
)

// SessionKey returns a new random session key, or fails tb.
func SessionKey(tb testing.TB) *signing.SessionKey {
	tb.Helper()
	k, err := signing.NewRandomSessionKey()
	if err != nil {
		tb.Fatal(err)
	}
	return k
}
