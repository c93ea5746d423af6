package nfq

// Later answers a packet whose handler returned Defer. The zero Later
// answers nothing (a packet that did not come from a queue).
type Later struct {
	w  *worker
	id uint32
}
