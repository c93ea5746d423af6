package agent

import "errors"

// ErrNotInMap: the node is not an instance of the map and has no outer
// interfaces, so it would be a gateway that steers nothing.
var ErrNotInMap = errors.New("not an instance in the map")
