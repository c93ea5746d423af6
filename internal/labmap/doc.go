// Package labmap holds the service map the tests share: the lab's map with
// fw as a stateful firewall, as the namespace lab (tests/lab) wires it.
// Unit tests use it without the lab, so that every package tests against
// the same tenants, services and addresses.
//
// It is for tests only and needs no privilege.
package labmap
