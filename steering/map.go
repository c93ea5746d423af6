package steering

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"

	"gopkg.in/yaml.v3"
)

// Map is the service map as an operator writes it: tenants, their chains of
// services, and the services' instances. Values are kept as written so that a
// map can be shown and written back unchanged; [Compile] turns a valid Map
// into the [Table] the data plane uses.
type Map struct {
	// Slots is the number of affinity slots, a power of two. Zero means
	// DefaultSlots.
	Slots    int                 `yaml:"slots,omitempty" json:"slots,omitempty"`
	Services map[string]*Service `yaml:"services" json:"services"`
	Tenants  map[string]*Tenant  `yaml:"tenants" json:"tenants"`
	// Overlay, if set, carries the service network in VXLAN between the
	// nodes (see [Overlay]).
	Overlay *Overlay `yaml:"overlay,omitempty" json:"overlay,omitempty"`
}

// Service is one kind of network function with several interchangeable
// instances.
type Service struct {
	// Function is what the service does to traffic: FunctionForward or
	// FunctionFirewall. Empty means FunctionForward.
	Function string `yaml:"function,omitempty" json:"function,omitempty"`
	// Instances maps an instance name (which is also the --node name of the
	// host that runs it) to its addresses on the service network.
	Instances map[string]Addresses `yaml:"instances" json:"instances"`
}

// FunctionName is the service's function, FunctionForward when empty.
func (s *Service) FunctionName() string {
	if s.Function == "" {
		return FunctionForward
	}
	return s.Function
}

// Addresses is an instance's list of addresses, at most one per family. In
// YAML it is either a single scalar or a list.
type Addresses []string

// UnmarshalYAML accepts "10.0.0.1" as well as [10.0.0.1, "fd00::1"].
func (a *Addresses) UnmarshalYAML(n *yaml.Node) error {
	switch n.Kind {
	case yaml.ScalarNode:
		*a = Addresses{n.Value}
		return nil
	case yaml.SequenceNode:
		var s []string
		if err := n.Decode(&s); err != nil {
			return err
		}
		*a = s
		return nil
	default:
		return fmt.Errorf("line %d: an instance takes an address or a list of addresses", n.Line)
	}
}

// Tenant is one customer: the source prefixes its traffic comes from and the
// ordered chain of services that traffic must cross.
type Tenant struct {
	// Ingress lists the gateway interfaces the tenant's traffic enters by
	// (the same names on every gateway). A packet entering there from
	// outside Prefixes, or from Prefixes anywhere else, is dropped as
	// spoofed. Without it the tenant is told apart by its prefixes alone.
	Ingress  []string `yaml:"ingress,omitempty" json:"ingress,omitempty"`
	Prefixes []string `yaml:"prefixes" json:"prefixes"`
	Chain    []string `yaml:"chain" json:"chain"`
	// Tag is the tenant's number on the overlay, 1 to MaxTag, unique in
	// the map: every packet a node steers to another carries it, and
	// instance hosts take the tenant from it, not from the addresses. A
	// map with an overlay needs one for every tenant.
	Tag uint16 `yaml:"tag,omitempty" json:"tag,omitempty"`
	// SNAT is the address the tenant's flows leave with at the end of its
	// chain. A tenant with one may share addresses with other such
	// tenants: it is told apart by its ingress interface, which it must
	// have (exactly one), and by its tag on the overlay, which the map
	// must have. Its flows are the ones its clients open.
	SNAT string `yaml:"snat,omitempty" json:"snat,omitempty"`
	// Via is the router, on the ingress link of a tenant with a SNAT
	// address, behind which its prefixes sit: the gateway sends it the
	// tenant's replies. Without it the prefixes are on the link itself.
	// It is of the prefixes' family (an IPv6 one may be link-local), and
	// may share its address with other tenants' routers, each on its own
	// link.
	Via string `yaml:"via,omitempty" json:"via,omitempty"`
	// Allow lists what the tenant's flows may open through a service whose
	// function is FunctionFirewall. Without rules such a service admits
	// nothing.
	Allow []Allow `yaml:"allow,omitempty" json:"allow,omitempty"`
}

// Known service functions.
const (
	// FunctionForward passes every flow.
	FunctionForward = "forward"
	// FunctionFirewall admits a flow only on its opening packet and only
	// if one of the tenant's allow rules matches; a mid-stream packet of a
	// flow it does not know is dropped, unless the flow's mirrored session
	// names this instance as its secondary (a takeover).
	FunctionFirewall = "firewall"
)

// Limits of a map. They follow from the kernel fast path: a node's mark has
// 12 bits per direction for the next hop (see package rules).
const (
	DefaultSlots = 256
	MaxSlots     = 1 << 16
	MaxChain     = 8
	MaxInstances = 4000
	// MaxTag is the highest tenant tag. An instance host reads a new
	// flow's tag from the 12 bits of its packet mark that hold the
	// original direction's hop once the flow is decided (see package
	// rules).
	MaxTag = 4095
)

// Parse decodes a YAML map strictly (unknown fields are errors) and
// validates it. The error wraps [ErrInvalidMap] for any problem with the
// document itself.
func Parse(b []byte) (*Map, error) {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var m Map
	if err := dec.Decode(&m); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%w: the document is empty", ErrInvalidMap)
		}
		return nil, fmt.Errorf("%w: %v", ErrInvalidMap, yamlError(err))
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

var (
	unknownField = regexp.MustCompile(`field (\S+) not found in type \S+`)
	wrongType    = regexp.MustCompile(`cannot unmarshal !!(\w+) (?:(.*) )?into (\S+)`)
)

// wanted names, for people, what a Go type decodes from.
func wanted(goType string) string {
	switch {
	case strings.HasPrefix(goType, "[]"):
		return "a list"
	case strings.HasPrefix(goType, "map["), strings.Contains(goType, "."):
		return "a mapping"
	case goType == "string":
		return "a string"
	case goType == "bool":
		return "true or false"
	case strings.Contains(goType, "int"):
		return "a whole number"
	}
	return goType
}

// yamlError says what the YAML decoder found in the map's words, not Go's:
// "unknown key "port"" rather than "field port not found in type
// steering.Allow", one problem per line as the decoder lists them.
func yamlError(err error) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return err
	}
	lines := make([]string, len(te.Errors))
	for i, e := range te.Errors {
		e = unknownField.ReplaceAllString(e, `unknown key "$1"`)
		lines[i] = wrongType.ReplaceAllStringFunc(e, func(m string) string {
			sub := wrongType.FindStringSubmatch(m)
			got := sub[2]
			if got == "" {
				got = map[string]string{"seq": "a list", "map": "a mapping"}[sub[1]]
			}
			return fmt.Sprintf("%s where %s is wanted", got, wanted(sub[3]))
		})
	}
	return errors.New(strings.Join(lines, "; "))
}

// LoadFile reads and parses a map file.
func LoadFile(path string) (*Map, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading map: %w", err)
	}
	m, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return m, nil
}

// SlotCount returns the effective number of slots.
func (m *Map) SlotCount() int {
	if m.Slots == 0 {
		return DefaultSlots
	}
	return m.Slots
}
