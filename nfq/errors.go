package nfq

import "errors"

// Errors returned by [Parse]. Each is a reason to count the packet and apply
// the bad-packet policy, never to crash.
var (
	ErrTruncated  = errors.New("truncated packet")
	ErrVersion    = errors.New("not an IPv4 or IPv6 packet")
	ErrHeaderLen  = errors.New("bad IP header length")
	ErrTotalLen   = errors.New("bad IP total length")
	ErrFragment   = errors.New("IP fragment")
	ErrL4Header   = errors.New("bad transport header")
	ErrExtHeaders = errors.New("bad IPv6 extension header chain")
)
