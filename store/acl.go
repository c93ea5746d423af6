package store

import (
	"fmt"
	"slices"

	"github.com/redis/go-redis/v9"
)

// ACLRole names what a Redis user of nfsteer's does, for least-privilege
// Redis users (Redis 7 ACLs).
type ACLRole string

// The roles: every agent, the controller, and operators' CLI.
const (
	// ACLAgent reads the map and its announcements, writes its heartbeats
	// and the sessions of the flows it carries, and reads sessions to
	// take flows over. It cannot publish a map.
	ACLAgent ACLRole = "agent"
	// ACLController reads heartbeats and may also write the map (its
	// down and health lists, as new versions), the health scores and
	// the controller lease. It touches no session.
	ACLController ACLRole = "controller"
	// ACLOperator is the CLI: it reads everything nfsteer keeps, and
	// publishes maps, hands sessions over (instance drain --migrate) and
	// reseals them (sessions reseal).
	ACLOperator ACLRole = "operator"
)

// About says in a line what r may do.
func (r ACLRole) About() string {
	switch r {
	case ACLAgent:
		return "every agent: reads the map, writes its heartbeats and its flows' sessions; cannot publish a map"
	case ACLController:
		return "the controller: reads heartbeats, publishes its failovers and health changes, holds the lease; no sessions"
	case ACLOperator:
		return "operators' CLI: reads everything, publishes maps, hands sessions over (instance drain --migrate) and reseals them"
	}
	return ""
}

// ACLRoles lists the roles in the order they are printed.
var ACLRoles = []ACLRole{ACLAgent, ACLController, ACLOperator}

// aclGrant is what one role may do: key patterns (with %R~ or %W~ where
// only reading or writing is allowed), pub/sub channels and commands.
type aclGrant struct {
	keys, channels, commands []string
}

// connecting is what every role's client does to connect and check the
// server: go-redis's handshake (HELLO; CLIENT SETINFO is not granted: Redis 7.0 has no such command, and go-redis goes on without it), PING, INFO (the
// version check and status), TIME, and on a Cluster the slot map. Scripts
// go by digest (EVALSHA), loaded once (SCRIPT LOAD) or sent whole (EVAL)
// when Redis does not know them.
var connecting = []string{"+hello", "+auth", "+client|setname", "+select", "+ping", "+info", "+time",
	"+cluster|slots", "+cluster|shards", "+readonly", "+evalsha", "+eval", "+script|load"}

// aclGrants is every role's grant. It is the one place that knows which
// keys and commands each side of nfsteer uses; TestACLRoles runs every
// store operation of each role as a user with exactly this grant.
var aclGrants = map[ACLRole]aclGrant{
	ACLAgent: {
		keys: []string{
			"%R~" + keyMapDoc, "%R~" + keyMapSig, "%R~" + keyMapLog, "%R~" + keyMapVersion,
			"~" + keyBeatAt, "~" + keyBeatReport, "~" + keyRestart,
			"~nfsteer:s:*", "~nfsteer:st:*", "~nfsteer:i:*",
		},
		channels: []string{Channel},
		commands: []string{"+get", "+lrange", "+multi", "+exec", "+subscribe", "+unsubscribe",
			"+set", "+del", "+hset", "+hdel", "+hgetall", "+pexpire", "+pttl", "+zadd", "+zrem", "+zremrangebyscore", "+sadd", "+smembers", "+srem", "+exists"},
	},
	ACLController: {
		keys: []string{
			"~" + keyMapDoc, "~" + keyMapSig, "~" + keyMapLog, "~" + keyMapVersion,
			"%R~" + keyBeatAt, "%R~" + keyBeatReport, "%R~" + keyRestart, "~" + keyScores,
			"~" + keyLease, "~" + keyControllers,
		},
		channels: []string{Channel},
		commands: []string{"+get", "+set", "+del", "+lrange", "+llen", "+rpush", "+watch", "+unwatch", "+multi", "+exec",
			"+publish", "+subscribe", "+unsubscribe", "+hset", "+hdel", "+hgetall", "+pexpire"},
	},
	ACLOperator: {
		keys:     []string{"~nfsteer:*"},
		channels: []string{Channel},
		commands: []string{"+get", "+set", "+del", "+lrange", "+llen", "+rpush", "+watch", "+unwatch", "+multi", "+exec",
			"+publish", "+subscribe", "+unsubscribe", "+hset", "+hget", "+hdel", "+hgetall", "+pexpire", "+pttl",
			"+zadd", "+zrem", "+zcount", "+zrangebyscore", "+zremrangebyscore", "+sadd", "+smembers"},
	},
}

// ACLRules returns the rules of an ACL SETUSER for role, after the user's
// name and password: no key, channel or command but those role needs.
func ACLRules(role ACLRole) ([]string, error) {
	g, ok := aclGrants[role]
	if !ok {
		return nil, fmt.Errorf("no Redis role %q (want agent, controller or operator)", role)
	}
	rules := []string{"resetkeys", "resetchannels", "-@all"}
	rules = append(rules, g.keys...)
	for _, c := range g.channels {
		rules = append(rules, "&"+c)
	}
	cmds := slices.Concat(connecting, g.commands)
	slices.Sort(cmds)
	return append(rules, slices.Compact(cmds)...), nil
}

// permission wraps err, when Redis refused a command for the user's ACL
// (NOPERM), so that it says so, names what was refused, and where to find
// what each role needs; callers can test it with errors.Is(err,
// ErrNoPermission).
func permission(err error) error {
	if !redis.HasErrorPrefix(err, "NOPERM") {
		return err
	}
	return fmt.Errorf("%w (nfsteer redis acl prints what each role needs): %w", ErrNoPermission, err)
}
