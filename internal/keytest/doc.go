// Package keytest makes the keys that tests seal and sign with, so that
// every package's tests get them one way.
//
// It is for tests only and needs no privilege.
package keytest
