package store

import "errors"

var (
	// ErrNoMap: Redis holds no map (never applied, or Redis lost its data).
	ErrNoMap = errors.New("no map in Redis")
	// ErrStaleVersion: a map version was offered that is not newer than
	// the live one.
	ErrStaleVersion = errors.New("map version is not newer than the live version")
	// ErrMalformed: an entry in Redis cannot be decoded.
	ErrMalformed = errors.New("malformed entry")
	// ErrOldRedis: the server is older than nfsteer needs.
	ErrOldRedis = errors.New("nfsteer needs Redis 7.0 or newer")
	// ErrUnchanged: a change would publish what the live version already
	// says, so nothing was published.
	ErrUnchanged = errors.New("the live map already says so: nothing published")
	// ErrNoSession: the flow has no session in Redis.
	ErrNoSession = errors.New("no such session")
)

// ErrNoPermission: Redis refused a command because the user's ACL does
// not allow it (see ACLRules).
var ErrNoPermission = errors.New("the Redis user lacks a permission nfsteer needs")
