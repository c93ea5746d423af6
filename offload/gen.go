package offload

// The programs' object and its Go bindings are generated from
// bpf/offload.c and kept in the repository, so that building nfsteer
// needs no C compiler; `go generate ./offload` rebuilds them (clang,
// libbpf-dev). Little-endian targets only (amd64, arm64).
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -tags linux -target bpfel -type flow_key -type flow_hop -type settings -type conn_key -type conn_state offload bpf/offload.c -- -O2 -Wall -I/usr/include/x86_64-linux-gnu
