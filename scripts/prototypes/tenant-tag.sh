#!/bin/bash
# A kernel prototype for issue 15 (the tenant tag and overlapping tenants),
# not part of nfsteer. Static rules stand in for the agents' decisions. It
# shows that this kernel can carry two tenants with the same client
# address and port, at the same time, through a two-service chain
# (gateway -> fw -> dlp -> gateway -> server), each leaving with its own
# SNAT address and its replies coming back through the chain in reverse
# to the interface it entered by.
#
#   - The service network is an overlay: on each node a VXLAN device with
#     GBP, its MAC derived from the node (in nfsteer: its instance ID),
#     with static FDB and neighbour entries for every other node (no
#     learning, no flooding).
#   - The tag: VXLAN-GBP carries the low 16 bits of the sender's packet
#     mark (and bits 19 and 22 as its A and D flags) to the receiver's
#     mark. Senders set the mark to the flow's conntrack zone just before
#     the tunnel (nft: meta mark set ct zone).
#   - Tenants are conntrack zones: where a tenant's traffic enters the
#     gateway (CT --zone T, both directions, because two tenants' reply
#     tuples are the same), and on instances from the tag (CT --zone mark).
#   - The gateway sees a flow twice: entering the chain and leaving it. The
#     chain's output is a second conntrack entry in zone T|0x8000
#     (--zone-orig: the server's reply, after SNAT, finds it in zone 0),
#     where the tenant's SNAT applies. Its reverse hop is the instance that
#     sent it, read from the inner Ethernet source (nft: ct mark set ether
#     saddr map), so the gateway needs no second crossing.
#   - Instances set the A flag on the reply direction, so that a reply
#     leaving the chain finds its tenant's first entry (zone T) and is
#     routed by the tag to the tenant's ingress (ip rule fwmark T/0xffff).
#
# Run as root: bash scripts/prototypes/tenant-tag.sh. It prints the
# address the server saw for each tenant with the bytes each received, and
# every node's conntrack entries, and removes its namespaces.
set -e
P=tq$$
B=${P}b R=${P}r S=${P}s G=${P}g F=${P}f D=${P}d W=${P}w
for n in $B $R $S $G $F $D $W; do ip netns add $n; ip -n $n link set lo up; done
OUT=$(mktemp -d)
cleanup() { for n in $B $R $S $G $F $D $W; do ip netns del $n 2>/dev/null; done; rm -rf "$OUT"; }
trap cleanup EXIT
link() { ip link add $2 netns $1 type veth peer name $4 netns $3; ip -n $1 link set $2 up; ip -n $3 link set $4 up; }
link $B b0 $G c1; link $R r0 $G c2; link $S s0 $G srv
ip -n $B addr add 10.50.0.5/24 dev b0; ip -n $B route add default via 10.50.0.1
ip -n $R addr add 10.50.0.5/24 dev r0; ip -n $R route add default via 10.50.0.1
ip -n $G addr add 10.50.0.1/24 dev c1; ip -n $G addr add 10.50.0.1/24 dev c2
ip -n $G route del 10.50.0.0/24 dev c1 || true; ip -n $G route del 10.50.0.0/24 dev c2 || true
ip -n $S addr add 10.99.0.2/24 dev s0; ip -n $S route add default via 10.99.0.1; ip -n $S route add 10.61.0.0/24 via 10.99.0.1
ip -n $G addr add 10.99.0.1/24 dev srv
# the service network: a bridge, underlay MTU 1600
ip -n $W link add br0 type bridge; ip -n $W link set br0 up
declare -A U=([$G]=10.200.0.1 [$F]=10.200.0.11 [$D]=10.200.0.21)
declare -A O=([$G]=169.254.0.1 [$F]=169.254.0.11 [$D]=169.254.0.21)
declare -A M=([$G]=02:6e:00:00:00:01 [$F]=02:6e:00:00:00:0b [$D]=02:6e:00:00:00:15)
i=0
for n in $G $F $D; do
  i=$((i+1)); link $n u0 $W p$i; ip -n $W link set p$i master br0; ip -n $W link set p$i mtu 1600; ip -n $n link set u0 mtu 1600
  ip -n $n addr add ${U[$n]}/24 dev u0
  ip -n $n link add vx type vxlan id 42 local ${U[$n]} dstport 4789 gbp nolearning
  ip -n $n link set vx address ${M[$n]}; ip -n $n addr add ${O[$n]}/24 dev vx; ip -n $n link set vx up
  ip netns exec $n sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 net.ipv4.conf.vx.rp_filter=0 net.ipv4.conf.u0.rp_filter=0
done
for i in c1 c2 srv; do ip netns exec $G sysctl -qw net.ipv4.conf.$i.rp_filter=0; done
# every node knows every other's tunnel MAC and underlay address (static, from the map)
for n in $G $F $D; do for p in $G $F $D; do [ $n = $p ] && continue
  bridge -n $n fdb append ${M[$p]} dev vx dst ${U[$p]} self permanent
  ip -n $n neigh replace ${O[$p]} lladdr ${M[$p]} dev vx nud permanent
done; done

# --- gateway
IPT="ip netns exec $G iptables"
$IPT -t raw -A PREROUTING -i c1 -j CT --zone 1
$IPT -t raw -A PREROUTING -i c2 -j CT --zone 2
$IPT -t raw -A PREROUTING -i vx -m mark --mark 0x80000/0x80000 -j CT --zone mark
$IPT -t raw -A PREROUTING -i vx -m mark ! --mark 0x80000/0x80000 -j MARK --set-xmark 0x8000/0x8000
$IPT -t raw -A PREROUTING -i vx -m mark --mark 0x8000/0x8000 -j CT --zone-orig mark
# entering the chain: to fw (the agent's decision, static here)
$IPT -t mangle -A PREROUTING -i c1 -j MARK --set-mark 0x100
$IPT -t mangle -A PREROUTING -i c2 -j MARK --set-mark 0x100
ip -n $G rule add fwmark 0x100/0xffff lookup 100 pref 100
ip -n $G route add default via ${O[$F]} dev vx onlink table 100
ip -n $G rule add fwmark 0x200/0xffff lookup 200 pref 101
ip -n $G route add default via ${O[$D]} dev vx onlink table 200
ip -n $G rule add fwmark 0x1/0xffff lookup 201 pref 201
ip -n $G rule add fwmark 0x2/0xffff lookup 202 pref 202
ip -n $G route add 10.50.0.0/24 dev c1 table 201
ip -n $G route add 10.50.0.0/24 dev c2 table 202
$IPT -t nat -A POSTROUTING -o srv -m mark --mark 0x8001/0xffff -j SNAT --to-source 10.61.0.101
$IPT -t nat -A POSTROUTING -o srv -m mark --mark 0x8002/0xffff -j SNAT --to-source 10.61.0.102
# the second entry's reverse hop: the instance that sent it, by its tunnel
# MAC (no second crossing); the server's reply restores it
ip netns exec $G nft -f - <<NFT
table ip nfsproto {
  chain pre {
    type filter hook prerouting priority mangle + 10;
    iifname "vx" ct original zone > 32767 ct mark set ether saddr map { ${M[$F]} : 0x100, ${M[$D]} : 0x200 }
    iifname "srv" meta mark set ct mark
  }
  chain post { type filter hook postrouting priority mangle + 10; oifname "vx" meta mark set ct original zone and 0x7fff; }
}
NFT

inst() { # node, forward next hop (overlay), reverse next hop (overlay)
  ip netns exec $1 iptables -t raw -A PREROUTING -i vx -j CT --zone mark
  ip -n $1 route add 10.99.0.0/24 via $2 dev vx onlink
  ip -n $1 route add 10.50.0.0/24 via $3 dev vx onlink
  ip netns exec $1 nft -f - <<NFT
table ip nfsproto {
  chain post {
    type filter hook postrouting priority mangle + 10;
    oifname "vx" meta mark set ct zone
    oifname "vx" ct direction reply meta mark set meta mark or 0x80000
  }
}
NFT
}
inst $F ${O[$D]} ${O[$G]}
inst $D ${O[$G]} ${O[$F]}

ip netns exec $S python3 - <<'PY' &
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.99.0.2", 80)); s.listen(16)
conns = []
for _ in range(2):
    c, a = s.accept(); conns.append((c, a))
for c, a in conns:
    c.sendall(("%s:%d " % a).encode() + b"x" * 100000); c.close()
PY
sleep 0.5
client() {
ip netns exec $1 python3 - <<'PY'
import socket
c = socket.socket(); c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
c.settimeout(5); c.bind(("10.50.0.5", 40000)); c.connect(("10.99.0.2", 80))
data = b""
while True:
    d = c.recv(65536)
    if not d: break
    data += d
print(data.split(b" ")[0].decode(), len(data))
PY
}
# both connections open at once: the same 5-tuple twice
client $B > "$OUT/blue" & client $R > "$OUT/red" & wait
echo "blue: $(cat "$OUT/blue")   red: $(cat "$OUT/red")   (server saw, bytes received)"
for n in $G $F $D; do echo "--- $n"; ip netns exec $n conntrack -L 2>/dev/null | grep "dport=80 " | sed 's/ \[ASSURED\]//; s/tcp *6 [0-9]* //' ; done
