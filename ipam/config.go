// Package ipam owns the node prefix: the address allocator, the crash-safe
// lease store with its hold-down list, and the Docker remote IPAM driver
// that hands those addresses to containers.
package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"time"
)

// Defaults for Config fields left zero.
const (
	DefaultHoldDown   = time.Hour
	DefaultPluginName = "v6reg"
	DefaultPluginDir  = "/run/docker/plugins"
	DefaultStateFile  = "/var/lib/v6reg/ipam.db"
)

// Prefix length bounds for the node prefix. Below /64 SLAAC-style
// assumptions break; above /112 the pool is too small for unpredictable
// picks to mean anything.
const (
	MinIPv6PrefixLen = 64
	MaxIPv6PrefixLen = 112
	MinIPv4PrefixLen = 8
	MaxIPv4PrefixLen = 30
)

// Config is the ipam part of the agent configuration. The agent's HCL
// config converts into it; WithDefaults fills zero fields and Validate says
// what is wrong.
type Config struct {
	// Prefix is the node's routed IPv6 prefix (/64../112).
	Prefix netip.Prefix
	// Gateway is the bridge's IPv6 address; zero means Prefix::1.
	Gateway netip.Addr
	// IPv4Subnet is the private IPv4 pool for NAT'd egress. Docker always
	// asks a bridge network for an IPv4 pool, so it is needed whenever a
	// network uses the driver.
	IPv4Subnet netip.Prefix
	// IPv4Gateway is the bridge's IPv4 address; zero means the first host
	// address of IPv4Subnet.
	IPv4Gateway netip.Addr
	// Reserved addresses are never handed out (routers, VIPs, ...).
	Reserved []netip.Addr
	// HoldDown is how long a released address stays unusable, so stale
	// DNS, Traefik and peer caches do not reach a new container.
	HoldDown time.Duration
	// StateFile is the bbolt lease store.
	StateFile string
	// PluginName is the IPAM driver name Docker knows the plugin by; the
	// socket is PluginDir/PluginName.sock.
	PluginName string
	// PluginDir is where dockerd discovers plugin sockets.
	PluginDir string
	// NetworkName is the Docker network served by the driver.
	NetworkName string
	// CreateNetwork makes EnsureNetwork create the network when missing;
	// otherwise a missing network is an error.
	CreateNetwork bool
	// BridgeName is the Linux bridge name; empty lets Docker choose.
	BridgeName string
}

// WithDefaults returns c with zero fields set to their defaults.
func (c Config) WithDefaults() Config {
	if c.HoldDown == 0 {
		c.HoldDown = DefaultHoldDown
	}
	if c.PluginName == "" {
		c.PluginName = DefaultPluginName
	}
	if c.PluginDir == "" {
		c.PluginDir = DefaultPluginDir
	}
	if c.StateFile == "" {
		c.StateFile = DefaultStateFile
	}
	if !c.Gateway.IsValid() && c.Prefix.IsValid() {
		c.Gateway = offsetAddr(c.Prefix, 1)
	}
	if !c.IPv4Gateway.IsValid() && c.IPv4Subnet.IsValid() {
		c.IPv4Gateway = offsetAddr(c.IPv4Subnet, 1)
	}
	return c
}

// SocketPath is where the driver listens.
func (c Config) SocketPath() string {
	return filepath.Join(c.PluginDir, c.PluginName+".sock")
}

// Validate reports every problem of c at once, each naming the field and
// what to do. Call it on the result of WithDefaults.
func (c Config) Validate() error {
	var errs []error
	if err := ValidateIPv6Prefix(c.Prefix); err != nil {
		errs = append(errs, fmt.Errorf("ipam prefix: %w", err))
	} else {
		if !c.Prefix.Contains(c.Gateway) {
			errs = append(errs, fmt.Errorf("ipam gateway %s is not inside prefix %s: use an address of the prefix or leave it empty for %s", c.Gateway, c.Prefix, offsetAddr(c.Prefix, 1)))
		} else if c.Gateway == c.Prefix.Addr() {
			errs = append(errs, fmt.Errorf("ipam gateway %s is the subnet-router anycast address of %s: use another address, e.g. %s", c.Gateway, c.Prefix, offsetAddr(c.Prefix, 1)))
		}
	}
	if c.IPv4Subnet.IsValid() {
		if err := ValidateIPv4Subnet(c.IPv4Subnet); err != nil {
			errs = append(errs, fmt.Errorf("ipam ipv4 subnet: %w", err))
		} else if !c.IPv4Subnet.Contains(c.IPv4Gateway) || c.IPv4Gateway == c.IPv4Subnet.Addr() || c.IPv4Gateway == lastAddr(c.IPv4Subnet) {
			errs = append(errs, fmt.Errorf("ipam ipv4 gateway %s is not a host address of %s: use one or leave it empty", c.IPv4Gateway, c.IPv4Subnet))
		}
	}
	for i, r := range c.Reserved {
		if !r.IsValid() {
			errs = append(errs, fmt.Errorf("ipam reserved[%d] is empty: remove it or give an address", i))
			continue
		}
		in6 := c.Prefix.IsValid() && c.Prefix.Contains(r)
		in4 := c.IPv4Subnet.IsValid() && c.IPv4Subnet.Contains(r)
		if !in6 && !in4 {
			errs = append(errs, fmt.Errorf("ipam reserved[%d] %s is outside prefix %s and ipv4 subnet %v: it would reserve nothing; remove it or fix the address", i, r, c.Prefix, c.IPv4Subnet))
		}
	}
	if c.HoldDown < 0 {
		errs = append(errs, fmt.Errorf("ipam hold_down %s is negative: use 0 for the default %s or a positive duration", c.HoldDown, DefaultHoldDown))
	}
	if c.StateFile == "" || !filepath.IsAbs(c.StateFile) {
		errs = append(errs, fmt.Errorf("ipam state file %q must be an absolute path (default %s)", c.StateFile, DefaultStateFile))
	}
	if c.PluginName == "" || strings.ContainsAny(c.PluginName, "/\\: \t\n") {
		errs = append(errs, fmt.Errorf("ipam plugin name %q must be a plain name without '/', ':' or spaces (it names %s/<name>.sock)", c.PluginName, c.PluginDir))
	}
	if len(c.SocketPath()) > 107 {
		errs = append(errs, fmt.Errorf("ipam plugin socket path %s is longer than the 107 bytes a unix socket allows: shorten plugin dir or name", c.SocketPath()))
	}
	if c.CreateNetwork && c.NetworkName == "" {
		errs = append(errs, errors.New("ipam create_network is set but network name is empty: name the Docker network"))
	}
	if len(c.BridgeName) > 15 {
		errs = append(errs, fmt.Errorf("ipam bridge name %q is longer than the 15 bytes Linux allows for an interface name", c.BridgeName))
	}
	return errors.Join(errs...)
}

// ParseIPv6Prefix parses and validates the node prefix: IPv6, /64../112,
// no host bits set. The error says what is wrong and what would be right.
func ParseIPv6Prefix(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(strings.TrimSpace(s))
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("node prefix %q: %w (want an IPv6 prefix such as 2001:db8:1:2:3::/80)", s, err)
	}
	if err := ValidateIPv6Prefix(p); err != nil {
		return netip.Prefix{}, err
	}
	return p, nil
}

// ParseIPv4Subnet parses and validates the IPv4 egress subnet.
func ParseIPv4Subnet(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(strings.TrimSpace(s))
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("ipv4 subnet %q: %w (want an IPv4 prefix such as 172.30.0.0/16)", s, err)
	}
	if err := ValidateIPv4Subnet(p); err != nil {
		return netip.Prefix{}, err
	}
	return p, nil
}

// ValidateIPv6Prefix checks a node prefix.
func ValidateIPv6Prefix(p netip.Prefix) error {
	switch {
	case !p.IsValid():
		return errors.New("node prefix is not set: give the IPv6 prefix routed to this node, e.g. 2001:db8:1:2:3::/80")
	case !p.Addr().Is6() || p.Addr().Is4In6():
		return fmt.Errorf("node prefix %s is not IPv6: give the IPv6 prefix routed to this node", p)
	case p.Addr().Zone() != "":
		return fmt.Errorf("node prefix %s has a zone: remove %%%s", p, p.Addr().Zone())
	case p.Bits() < MinIPv6PrefixLen || p.Bits() > MaxIPv6PrefixLen:
		return fmt.Errorf("node prefix %s has length /%d: want /%d to /%d", p, p.Bits(), MinIPv6PrefixLen, MaxIPv6PrefixLen)
	case p.Masked() != p:
		return fmt.Errorf("node prefix %s has host bits set: did you mean %s?", p, p.Masked())
	}
	return nil
}

// ValidateIPv4Subnet checks an IPv4 egress subnet.
func ValidateIPv4Subnet(p netip.Prefix) error {
	switch {
	case !p.IsValid():
		return errors.New("ipv4 subnet is not set")
	case !p.Addr().Is4():
		return fmt.Errorf("ipv4 subnet %s is not IPv4 (write 172.30.0.0/16, not an IPv4-mapped IPv6 prefix)", p)
	case p.Bits() < MinIPv4PrefixLen || p.Bits() > MaxIPv4PrefixLen:
		return fmt.Errorf("ipv4 subnet %s has length /%d: want /%d to /%d", p, p.Bits(), MinIPv4PrefixLen, MaxIPv4PrefixLen)
	case p.Masked() != p:
		return fmt.Errorf("ipv4 subnet %s has host bits set: did you mean %s?", p, p.Masked())
	}
	return nil
}
