#!/bin/bash
# An experiment for issue 17, not part of nfsteer: what the xt calls of
# nfsteer's rules cost a forwarded packet, against native nft expressions.
#
# A router namespace forwards one UDP flow of 64-byte datagrams (iperf3,
# unpaced) from a client namespace to a server namespace. The flow is a
# decided one (its connmark is set once it exists), and the router runs,
# in turn:
#   xt    nfsteer's mangle rules as iptables-nft builds them: per packet,
#         CONNMARK --restore-mark and -m conntrack --ctdir go through the
#         xt compatibility layer; the mark tests are native;
#   xt10  the same and 10 more xt matches per packet (-m conntrack
#         --ctstate INVALID, which fails): a calibration;
#   nft   the restore, the direction bit and the unsteered counter as
#         native nft expressions in a table of their own; the queue
#         rules' mark tests stay in iptables (native).
# It prints the datagrams per second the server received, per round.
#
# Run as root: bash scripts/prototypes/xt-cost.sh. It removes its
# namespaces when it ends.
set -e
P=xe$$; C=${P}c R=${P}r S=${P}s
for n in $C $R $S; do ip netns add $n; ip -n $n link set lo up; done
trap 'for n in $C $R $S; do ip netns pids $n 2>/dev/null | xargs -r kill 2>/dev/null; ip netns del $n 2>/dev/null; done' EXIT
ip link add c0 netns $C type veth peer name rc netns $R
ip link add s0 netns $S type veth peer name rs netns $R
for x in "$C c0" "$R rc" "$R rs" "$S s0"; do set -- $x; ip -n $1 link set $2 up; done
ip -n $C addr add 10.1.0.2/24 dev c0; ip -n $C route add default via 10.1.0.1
ip -n $R addr add 10.1.0.1/24 dev rc; ip -n $R addr add 10.2.0.1/24 dev rs
ip -n $S addr add 10.2.0.2/24 dev s0; ip -n $S route add default via 10.2.0.1
ip netns exec $R sysctl -qw net.ipv4.ip_forward=1
mode_none() { :; }
mode_xt() {
  I="ip netns exec $R iptables -t mangle"
  $I -N PRE; $I -N POST
  $I -A PREROUTING -i rc -j PRE; $I -A PREROUTING -i rs -j PRE; $I -A POSTROUTING -j POST
  $I -A PRE -j CONNMARK --restore-mark --nfmask 0xffffff --ctmask 0xffffff
  $I -A PRE -m conntrack --ctdir REPLY -j MARK --or-mark 0x1000000
  $I -A PRE -m mark --mark 0x0/0x1000fff -m addrtype --dst-type UNICAST -j ACCEPT
  $I -A PRE -m mark --mark 0x1000000/0x1fff000 -m addrtype --dst-type UNICAST -j ACCEPT
  $I -A POST -m mark --mark 0x2000000/0x2000000 -j CONNMARK --save-mark --nfmask 0xffffff --ctmask 0xffffff
  $I -A POST -m mark --mark 0x0/0xfff -m connmark --mark 0x0/0xfff -m conntrack --ctstate NEW -m addrtype ! --src-type LOCAL -m comment --comment x
}
mode_xt10() {
  mode_xt
  for i in 1 2 3 4 5 6 7 8 9 10; do ip netns exec $R iptables -t mangle -A PRE -m conntrack --ctstate INVALID -j DROP; done
}
mode_nft() {
  I="ip netns exec $R iptables -t mangle"
  $I -N PRE; $I -N POST
  $I -A PREROUTING -i rc -j PRE; $I -A PREROUTING -i rs -j PRE; $I -A POSTROUTING -j POST
  $I -A PRE -m mark --mark 0x0/0x1000fff -m addrtype --dst-type UNICAST -j ACCEPT
  $I -A PRE -m mark --mark 0x1000000/0x1fff000 -m addrtype --dst-type UNICAST -j ACCEPT
  $I -A POST -m mark --mark 0x2000000/0x2000000 -j CONNMARK --save-mark --nfmask 0xffffff --ctmask 0xffffff
  ip netns exec $R nft -f - <<'NFT'
table inet nfs {
  chain pre { type filter hook prerouting priority mangle - 5;
    iifname { "rc", "rs" } meta mark & 0xff000000 == 0 meta mark set ct mark & 0xffffff
    iifname { "rc", "rs" } ct direction reply meta mark set meta mark | 0x1000000
  }
  counter unsteered { }
  chain post { type filter hook postrouting priority mangle - 5;
    meta mark & 0xfff == 0 ct mark & 0xfff == 0 ct state new fib saddr type != local counter name unsteered
  }
}
NFT
}
run() { # mode -> pps
  ip netns exec $R iptables -t mangle -F; ip netns exec $R iptables -t mangle -X 2>/dev/null || true
  ip netns exec $R nft delete table inet nfs 2>/dev/null || true
  mode_$1
  ip netns exec $S iperf3 -s -D -1 -p 5999 >/dev/null 2>&1
  sleep 0.3
  # set the connmark of the flow once it exists (a decided flow)
  (sleep 1; ip netns exec $R conntrack -U -p udp --dport 5999 --mark 0x5005 >/dev/null 2>&1) &
  out=$(ip netns exec $C iperf3 -c 10.2.0.2 -p 5999 -u -b 0 -l 64 -t 5 -J 2>/dev/null)
  wait
  echo "$out" | python3 -c 'import json,sys; d=json.load(sys.stdin)["end"]["sum"]; print("%.0f" % ((d["packets"]-d["lost_packets"])/d["seconds"]))'
}
for round in 1 2 3 4 5 6; do
  for m in xt xt10 nft; do printf "%s %s %s\n" $round $m "$(run $m)"; done
done
