// Package rawsys reads and writes the agent's non-blocking sockets with
// raw system calls: read(2) and write(2) without the Go scheduler's
// system-call hooks, for the netlink queue socket (nfq) and the Redis
// connections (store).
//
// The hooks cost more than the call on a node that forwards packets. The
// first system call after the process was idle wakes the runtime's
// monitor thread (sysmon), which then polls every 20 µs for a
// millisecond or more: a futex wake and tens of thread wake-ups, on CPUs
// the packet path needs. A call that runs past 20 µs, as a write does
// while the kernel forwards or delivers what it carries inside it, has
// its P taken and handed to another thread. A call on a non-blocking
// socket cannot block, so the P needs no hand-off; the runtime's poller
// still waits for the socket when it would block, and deadlines hold.
//
// [Wrap] makes such a connection of a net.Conn, for clients that use a
// connection in bursts (go-redis): it checks, with a raw peek, that the
// server has not closed or reset a connection that sat unused for
// [IdlePeek] before writing on it.
//
// It needs no privilege.
package rawsys
