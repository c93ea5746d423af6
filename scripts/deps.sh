#!/usr/bin/env bash
# Installs the Debian packages nfsteer's tests, demo and benchmarks use, if
# any is missing. Needs root (apt-get).
set -euo pipefail
need=()
for pair in iptables:iptables ip:iproute2 nft:nftables redis-server:redis-server redis-cli:redis-tools iperf3:iperf3 tcpdump:tcpdump conntrack:conntrack zsh:zsh; do
	command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
[ ${#need[@]} -eq 0 ] && exit 0
echo "installing: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
