// Package signing signs the map versions nfsteer publishes and verifies
// them where they are followed. Whoever can write to Redis could otherwise
// publish a map that steers any tenant's traffic anywhere; with signing,
// an agent or controller given trusted public keys refuses every version
// that no trusted key signed.
//
// Keys are ed25519. A private key file is PEM ("PRIVATE KEY", PKCS #8), a
// public key file PEM ("PUBLIC KEY", PKIX): the forms openssl and Go's
// crypto/x509 read and write. A key is named by its ID, the first 8 bytes
// of the SHA-256 of the public key, in hex.
//
// What is signed is the exact bytes a reader decodes, with what they are
// (a whole map document or a delta) and a fixed domain string: a
// signature over one payload cannot pass for another's, and a payload
// carries its own version (and a delta, the version it applies to), so a
// signature over one version is no signature over another.
//
// Session records mirrored to Redis carry a MAC under a key the whole
// fleet shares ([SessionKey], HMAC-SHA256): a record no holder of the key
// wrote cannot point a flow at another instance, nor admit a flow no
// firewall admitted. A node holds [SessionKeys]: the key it seals with,
// and others whose seals it trusts, so that a fleet starts sealing, or
// changes its key, one node at a time.
//
// The package touches no kernel state and needs no privilege; it reads
// and writes key files only when asked to.
package signing
