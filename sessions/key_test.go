package sessions

import (
	"errors"
	"testing"
)

func TestKeyString(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"tcp/10.99.0.2:5201/10.10.1.2:40000", "tcp/10.10.1.2:40000/10.99.0.2:5201"},
		{"UDP/[fd00:10::2]:53/[fd00:99::2]:53", "udp/[fd00:10::2]:53/[fd00:99::2]:53"},
		{"47/10.0.0.1:0/10.0.0.2:0", "47/10.0.0.1:0/10.0.0.2:0"},
		// A tenant's flow on an overlay.
		{"t7/tcp/10.99.0.2:5201/10.10.1.2:40000", "t7/tcp/10.10.1.2:40000/10.99.0.2:5201"},
		{"t65535/udp/10.0.0.1:1/10.0.0.2:2", "t65535/udp/10.0.0.1:1/10.0.0.2:2"},
	} {
		k, err := ParseKey(tc.in)
		if err != nil {
			t.Fatalf("ParseKey(%q): %v", tc.in, err)
		}
		if got := k.String(); got != tc.want {
			t.Errorf("ParseKey(%q).String() = %q, want %q", tc.in, got, tc.want)
		}
	}
	for _, bad := range []string{"", "tcp", "tcp/1.2.3.4:1", "tcp/1.2.3.4/1.2.3.5:1", "xyz/1.2.3.4:1/1.2.3.5:1",
		"tcp/1.2.3.4:1/[::1]:1", "tcp/[fe80::1%eth0]:1/[fe80::2]:1", "tcp/1.2.3.4:70000/1.2.3.5:1",
		"t0/tcp/1.2.3.4:1/1.2.3.5:1", "t07/tcp/1.2.3.4:1/1.2.3.5:1", "t65536/tcp/1.2.3.4:1/1.2.3.5:1", "x7/tcp/1.2.3.4:1/1.2.3.5:1",
		"t+7/tcp/1.2.3.4:1/1.2.3.5:1", "t7/t7/tcp/1.2.3.4:1/1.2.3.5:1"} {
		if _, err := ParseKey(bad); !errors.Is(err, ErrBadKey) {
			t.Errorf("ParseKey(%q) = %v, want ErrBadKey", bad, err)
		}
	}
}

// FuzzParseKey checks that whatever parses prints back to a key that parses
// to the same thing, and that nothing panics.
func FuzzParseKey(f *testing.F) {
	for _, s := range []string{"tcp/10.10.1.2:40000/10.99.0.2:5201", "udp/[fd00::1]:1/[fd00::2]:2", "1/0.0.0.0:0/0.0.0.0:0", "a/b/c", "t3/tcp/10.0.0.1:1/10.0.0.2:2"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		k, err := ParseKey(s)
		if err != nil {
			return
		}
		k2, err := ParseKey(k.String())
		if err != nil {
			t.Fatalf("ParseKey(%q) ok, but its String %q does not parse: %v", s, k.String(), err)
		}
		if k2 != k {
			t.Fatalf("round trip of %q: %v != %v", s, k2, k)
		}
		if k.ordered() != k {
			t.Fatalf("ParseKey(%q) gave unordered key %v", s, k)
		}
	})
}
