package redislab

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// PKI is a test certificate authority and what it signed, as PEM files in
// a directory of the test's: a server certificate for the hosts it was
// made for, the same expired, and a client certificate. OtherCA signed
// none of them.
type PKI struct {
	CA, OtherCA                         string
	ServerCert, ServerKey               string
	ExpiredServerCert, ExpiredServerKey string
	ClientCert, ClientKey               string
}

// NewPKI makes a PKI whose server certificates name hosts (IP addresses
// or DNS names).
func NewPKI(tb testing.TB, hosts ...string) *PKI {
	tb.Helper()
	dir := tb.TempDir()
	p := &PKI{}
	ca, caKey := newCA(tb, dir, "ca", &p.CA)
	newCA(tb, dir, "other-ca", &p.OtherCA)
	now := time.Now()
	leaf := func(name string, server bool, notAfter time.Time, cert, key *string) {
		t := &x509.Certificate{
			SerialNumber: serial(tb), Subject: pkix.Name{CommonName: name},
			NotBefore: now.Add(-2 * time.Hour), NotAfter: notAfter,
			KeyUsage: x509.KeyUsageDigitalSignature,
		}
		if server {
			t.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
			for _, h := range hosts {
				if ip := net.ParseIP(h); ip != nil {
					t.IPAddresses = append(t.IPAddresses, ip)
				} else {
					t.DNSNames = append(t.DNSNames, h)
				}
			}
		} else {
			t.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
		}
		write(tb, dir, name, t, ca, caKey, cert, key)
	}
	leaf("server", true, now.Add(time.Hour), &p.ServerCert, &p.ServerKey)
	leaf("expired-server", true, now.Add(-time.Hour), &p.ExpiredServerCert, &p.ExpiredServerKey)
	leaf("client", false, now.Add(time.Hour), &p.ClientCert, &p.ClientKey)
	return p
}

func serial(tb testing.TB) *big.Int {
	n, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		tb.Fatal(err)
	}
	return n
}

func newCA(tb testing.TB, dir, name string, file *string) (*x509.Certificate, *ecdsa.PrivateKey) {
	tb.Helper()
	t := &x509.Certificate{
		SerialNumber: serial(tb), Subject: pkix.Name{CommonName: "nfsteer test " + name},
		NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	var key string
	c, k := write(tb, dir, name, t, nil, nil, file, &key)
	return c, k
}

// write makes a key, signs t with parent (t itself if nil), and writes
// both as PEM files.
func write(tb testing.TB, dir, name string, t, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, certFile, keyFile *string) (*x509.Certificate, *ecdsa.PrivateKey) {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	if parent == nil {
		parent, parentKey = t, key
	}
	der, err := x509.CreateCertificate(rand.Reader, t, parent, &key.PublicKey, parentKey)
	if err != nil {
		tb.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		tb.Fatal(err)
	}
	*certFile, *keyFile = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(*certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(*keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		tb.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	return c, key
}
