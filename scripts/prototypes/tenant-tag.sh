#!/bin/bash
# A kernel prototype for issue 15 (the tenant tag and overlapping tenants),
# not part of nfsteer: it shows, with static rules in place of the agents'
# decisions, that this kernel can carry two tenants with the same client
# address and port through one service instance and out with their own
# SNAT address, and their replies back to the interface they entered by.
#
#   - The tag: VXLAN with GBP carries the low 16 bits of the sender's
#     packet mark (and bits 19 and 22 as its A and D flags) to the
#     receiver's mark. Senders set the mark to the flow's conntrack zone
#     just before the tunnel (nft: meta mark set ct zone).
#   - Tenants are conntrack zones: where a tenant's traffic enters the
#     gateway (CT --zone T), and on instances from the tag (CT --zone mark).
#   - The gateway sees a flow twice: entering the chain and leaving it. The
#     chain's output is a second conntrack entry in zone T|0x8000
#     (--zone-orig: the server's reply, after SNAT, finds it in zone 0),
#     where the tenant's SNAT applies. Instances set the A flag on the
#     reply direction, so that a reply leaving the chain finds its
#     tenant's first entry (zone T) and is routed by the tag to the
#     tenant's ingress interface.
#   - Not shown here, checked by hand the same day: after decapsulation
#     the inner Ethernet source is the sending node's tunnel device, and
#     nft matches it in an ip-family prerouting chain (ether saddr). With
#     MACs derived from instance IDs, a kernel map can give the second
#     entry its reverse hop (the instance that sent it), so the gateway
#     needs no second crossing for it. Here there is one instance, and the
#     server's reply is steered to it by a static rule.
#
# Run as root: bash scripts/prototypes/tenant-tag.sh. It prints the
# address the server saw for each tenant and both nodes' conntrack
# entries, and removes its namespaces.
set -e
P=tp$$
B=${P}b R=${P}r S=${P}s G=${P}g F=${P}f
for n in $B $R $S $G $F; do ip netns add $n; ip -n $n link set lo up; done
cleanup() { for n in $B $R $S $G $F; do ip netns del $n 2>/dev/null; done; }
trap cleanup EXIT
link() { ip link add $2 netns $1 type veth peer name $4 netns $3; ip -n $1 link set $2 up; ip -n $3 link set $4 up; }
link $B b0 $G c1; link $R r0 $G c2; link $S s0 $G srv; link $F f0 $G u0
ip -n $B addr add 10.50.0.5/24 dev b0; ip -n $B route add default via 10.50.0.1
ip -n $R addr add 10.50.0.5/24 dev r0; ip -n $R route add default via 10.50.0.1
ip -n $G addr add 10.50.0.1/24 dev c1; ip -n $G addr add 10.50.0.1/24 dev c2
ip -n $S addr add 10.99.0.2/24 dev s0; ip -n $S route add default via 10.99.0.1
ip -n $G addr add 10.99.0.1/24 dev srv
ip -n $G link set u0 mtu 1600; ip -n $F link set f0 mtu 1600
ip -n $G addr add 10.200.0.1/24 dev u0; ip -n $F addr add 10.200.0.11/24 dev f0
ip -n $G link add vx type vxlan id 42 local 10.200.0.1 remote 10.200.0.11 dstport 4789 gbp nolearning
ip -n $F link add vx type vxlan id 42 local 10.200.0.11 remote 10.200.0.1 dstport 4789 gbp nolearning
ip -n $G addr add 169.254.0.1/24 dev vx; ip -n $G link set vx up
ip -n $F addr add 169.254.0.11/24 dev vx; ip -n $F link set vx up
for n in $G $F; do
  ip netns exec $n sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
done
for i in c1 c2 srv u0 vx; do ip netns exec $G sysctl -qw net.ipv4.conf.$i.rp_filter=0; done
ip netns exec $F sysctl -qw net.ipv4.conf.vx.rp_filter=0 net.ipv4.conf.f0.rp_filter=0
# the same client subnet behind two interfaces: no connected route decides
ip -n $G route del 10.50.0.0/24 dev c1 || true
ip -n $G route del 10.50.0.0/24 dev c2 || true

# --- gateway
IPT="ip netns exec $G iptables"
# tenant zones where traffic enters (both directions: the reply tuples of
# two tenants' first passes are the same)
$IPT -t raw -A PREROUTING -i c1 -j CT --zone 1
$IPT -t raw -A PREROUTING -i c2 -j CT --zone 2
# from the chain: a reply (GBP A bit, mark 0x80000) returns to its tenant's
# first-pass entry; the forward direction is the chain's output, a second
# pass in zone T|0x8000 (directional: the server's reply, after SNAT,
# finds it in zone 0)
$IPT -t raw -A PREROUTING -i vx -m mark --mark 0x80000/0x80000 -j CT --zone mark
$IPT -t raw -A PREROUTING -i vx -m mark ! --mark 0x80000/0x80000 -j MARK --set-xmark 0x8000/0x8000
$IPT -t raw -A PREROUTING -i vx -m mark --mark 0x8000/0x8000 -j CT --zone-orig mark
# steering (the agent's decision, static here): into the chain
$IPT -t mangle -A PREROUTING -i c1 -j MARK --set-mark 0x100
$IPT -t mangle -A PREROUTING -i c2 -j MARK --set-mark 0x100
$IPT -t mangle -A PREROUTING -i srv -j MARK --set-mark 0x100
ip -n $G rule add fwmark 0x100/0xffff lookup 100 pref 100
ip -n $G route add default via 169.254.0.11 dev vx onlink table 100
# replies leaving the chain go out where their tenant entered
ip -n $G rule add fwmark 0x1/0xffff lookup 201 pref 201
ip -n $G rule add fwmark 0x2/0xffff lookup 202 pref 202
ip -n $G route add 10.50.0.0/24 dev c1 table 201
ip -n $G route add 10.50.0.0/24 dev c2 table 202
# per-tenant SNAT at the chain's exit
$IPT -t nat -A POSTROUTING -o srv -m mark --mark 0x8001/0xffff -j SNAT --to-source 10.61.0.101
$IPT -t nat -A POSTROUTING -o srv -m mark --mark 0x8002/0xffff -j SNAT --to-source 10.61.0.102
ip -n $S route add 10.61.0.0/24 via 10.99.0.1
# the tag: the flow's tenant (its zone, without the second-pass bit)
ip netns exec $G nft -f - <<NFT
table ip nfsproto {
  chain post { type filter hook postrouting priority mangle + 10; oifname "vx" meta mark set ct original zone and 0x7fff; }
}
NFT

# --- firewall instance: zone from the tag, tag again on the way out,
# A bit on the reply direction
ip netns exec $F iptables -t raw -A PREROUTING -i vx -j CT --zone mark
ip -n $F route add default via 169.254.0.1 dev vx onlink
ip netns exec $F nft -f - <<NFT
table ip nfsproto {
  chain post {
    type filter hook postrouting priority mangle + 10;
    oifname "vx" meta mark set ct zone
    oifname "vx" ct direction reply meta mark set meta mark or 0x80000
  }
}
NFT

# --- server: tells each client the address it saw
ip netns exec $S python3 - <<'PY' &
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.99.0.2", 80)); s.listen(16)
for _ in range(2):
    c, a = s.accept(); c.sendall(("%s:%d\n" % a).encode()); c.close()
PY
sleep 0.5
client() {
ip netns exec $1 python3 - <<'PY'
import socket
c = socket.socket(); c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
c.settimeout(3); c.bind(("10.50.0.5", 40000)); c.connect(("10.99.0.2", 80))
print(c.recv(100).decode().strip())
PY
}
echo "blue sees the server saw: $(client $B)"
echo "red  sees the server saw: $(client $R)"
wait
echo "--- gateway conntrack"; ip netns exec $G conntrack -L 2>/dev/null | grep "dport=80 " || true
echo "--- firewall conntrack"; ip netns exec $F conntrack -L 2>/dev/null | grep "dport=80 " || true
