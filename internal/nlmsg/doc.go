// Package nlmsg reads netlink messages and their attributes in place, on
// the byte slices a socket read returns, allocating nothing: for the
// packet path (nfq) and for walking conntrack (rules), where a library
// that decodes every message into values costs an allocation per message
// and, for a dump of the whole conntrack table, a copy of it.
//
// It needs no privilege.
package nlmsg
