package rawsys

import "time"

// IdlePeek is how long a connection may sit unused before its next write
// first checks that the server has not closed it.
const IdlePeek = time.Second
