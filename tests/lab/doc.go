// Package lab builds nfsteer's test network out of network namespaces and
// runs real nfsteer agents in it. The integration tests, `make demo` and
// `make bench` share it.
//
//	acme client (ca)   ─┐                      ┌─ fw-1   fw-2   dlp-1   dlp-2
//	globex client (cg) ─┼─ gateway (gw) ─ svc0 ─┴──────── service bridge (sw)
//	other client (cx)  ─┤      │
//	                           └─ server (srv)
//
// The gateway is one-armed: it steers what arrives on its client and
// server interfaces (--outer) into the service network, and the chain's
// last instance hands the flow back to it to be routed on. Every name
// starts with a prefix unique to the lab, and nothing is created in the
// caller's namespace, so labs never collide and [Lab.Close] (or the test's
// cleanup) removes everything by deleting the namespaces.
//
// It needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN), the ip, nft and iptables
// commands, and an nfsteer binary.
package lab
