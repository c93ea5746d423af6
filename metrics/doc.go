// Package metrics serves Prometheus metrics over HTTP for the agent and
// the controller (`--metrics ADDR`, path /metrics).
//
// It owns only the endpoint: each daemon registers collectors that read its
// own atomic counters at scrape time, so nothing on the packet path does
// more than an atomic add. Serving needs no privilege beyond binding the
// address.
package metrics
