// Package config loads the agent's configuration: defaults, then one HCL
// file, then environment variables, then flags, validated once. Every
// invalid field is reported, each as "file:line: field: what is wrong: what
// to do", so an operator fixes all of them in one pass.
package config

import (
	"github.com/v6reg/v6reg/peers"

	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclsyntax"

	"github.com/v6reg/v6reg/firewall"
	"github.com/v6reg/v6reg/policies"
)

// DefaultPath is where packaging installs the configuration.
const DefaultPath = "/etc/v6reg/v6reg.hcl"

// Config is the validated agent configuration.
type Config struct {
	// NodeName names this node in Consul service IDs and meta.
	NodeName string
	// NodePrefix is the IPv6 prefix routed to this node (normally a /80).
	NodePrefix netip.Prefix
	// Gateway is the bridge's address in NodePrefix; never leased.
	Gateway netip.Addr
	// IPv4Subnet is the private subnet for NAT'd IPv4 egress.
	IPv4Subnet netip.Prefix
	// Reserved addresses are never leased.
	Reserved []netip.Addr
	// HoldDown is how long a released address stays unused.
	HoldDown time.Duration
	// StateDir holds the lease store.
	StateDir string
	// APISocket is the root-only unix socket of the local status API.
	APISocket string
	// MetricsAddress is the loopback address Prometheus scrapes; empty disables.
	MetricsAddress string
	// ResyncInterval is the period of the full reconcile.
	ResyncInterval time.Duration
	LogLevel       slog.Level
	LogFormat      string // "text" or "json"

	Docker Docker
	Consul Consul
	Nomad  Nomad
	// Policy is the operator's side of the policy language: named peer
	// sets, per-namespace bounds, service tag templates.
	Policy   policies.Operator
	Firewall Firewall

	// Dev is set by `v6reg agent -dev`.
	Dev bool
	// Source names the file the configuration came from ("" for none).
	Source string

	pos position        // where each field was set, for error messages
	bad map[string]bool // fields already reported while parsing
}

// Docker configures the Docker engine connection and the node's network.
type Docker struct {
	Host          string // DOCKER_HOST form, e.g. unix:///var/run/docker.sock
	Network       string // the Docker network v6reg serves
	CreateNetwork bool   // create Network at start if missing
	BridgeName    string // Linux bridge name for Network; empty lets Docker pick
	PluginName    string // IPAM driver name; socket PluginDir/PluginName.sock
	PluginDir     string
}

// Consul configures registration through the local Consul agent.
type Consul struct {
	Enabled    bool
	Address    string
	Token      string
	CAFile     string
	CertFile   string
	KeyFile    string
	IDPrefix   string // prefix of every service ID v6reg owns
	Datacenter string
	// WatchConnections bounds the connections the peer watches hold to
	// Consul (limits.consul_watch_connections).
	WatchConnections int
}

// Nomad configures the read of this node's allocations.
type Nomad struct {
	Enabled  bool
	Address  string
	Token    string
	CAFile   string
	CertFile string
	KeyFile  string
	NodeID   string // empty: ask the local Nomad agent
	Region   string
}

// Firewall configures the nftables table.
type Firewall struct {
	// Enabled programs the table; disabling it leaves the prefix wide open
	// and is meant for IPAM-only deployments.
	Enabled bool
	// NodePorts are the node's own services every container may reach
	// (a resolver or Consul agent on the gateway); nothing else on the
	// node answers containers.
	NodePorts []firewall.Rule
}

// Default returns the configuration used where nothing else is said.
func Default() Config {
	host, _ := os.Hostname()
	return Config{
		NodeName:       host,
		IPv4Subnet:     netip.MustParsePrefix("172.30.0.0/16"),
		HoldDown:       time.Hour,
		StateDir:       "/var/lib/v6reg",
		APISocket:      "/run/v6reg/v6reg.sock",
		MetricsAddress: "127.0.0.1:9466",
		ResyncInterval: 60 * time.Second,
		LogLevel:       slog.LevelInfo,
		LogFormat:      "text",
		Docker: Docker{
			Host:          "unix:///var/run/docker.sock",
			Network:       "v6reg",
			CreateNetwork: true,
			BridgeName:    "v6reg0",
			PluginName:    "v6reg",
			PluginDir:     "/run/docker/plugins",
		},
		Consul: Consul{
			Enabled:          true,
			Address:          "127.0.0.1:8500",
			IDPrefix:         "v6reg",
			WatchConnections: peers.DefaultWatchConnections,
		},
		Nomad: Nomad{
			Enabled: false,
			Address: "http://127.0.0.1:4646",
		},
		Firewall: Firewall{Enabled: true},
		Policy:   policies.DefaultOperator(),
	}
}

// FieldError is one invalid field, with where it was set.
type FieldError struct {
	Where   string // "file:line", "env NAME" or "flag -name"
	Field   string // dotted path, e.g. docker.network
	Problem string
	Fix     string
}

func (e *FieldError) Error() string {
	s := e.Field + ": " + e.Problem
	if e.Where != "" {
		s = e.Where + ": " + s
	}
	if e.Fix != "" {
		s += ": " + e.Fix
	}
	return s
}

// raw mirrors the HCL file; every value is a string until validated so
// that errors point at the attribute that holds the bad value.
type raw struct {
	NodeName         *string     `hcl:"node_name"`
	NodePrefix       *string     `hcl:"node_prefix"`
	Gateway          *string     `hcl:"gateway"`
	IPv4Subnet       *string     `hcl:"ipv4_egress_subnet"`
	Reserved         *[]string   `hcl:"reserved"`
	HoldDown         *string     `hcl:"hold_down"`
	StateDir         *string     `hcl:"state_dir"`
	APISocket        *string     `hcl:"api_socket"`
	MetricsAddress   *string     `hcl:"metrics_address"`
	ResyncInterval   *string     `hcl:"resync_interval"`
	LogLevel         *string     `hcl:"log_level"`
	LogFormat        *string     `hcl:"log_format"`
	InternalPrefixes *[]string   `hcl:"internal_prefixes"`
	Docker           *rawDocker  `hcl:"docker,block"`
	Consul           *rawConsul  `hcl:"consul,block"`
	Nomad            *rawNomad   `hcl:"nomad,block"`
	Firewall         *rawFW      `hcl:"firewall,block"`
	Peers            []rawPeer   `hcl:"peer,block"`
	Namespaces       []rawNS     `hcl:"namespace,block"`
	Services         *rawService `hcl:"services,block"`
	Limits           *rawLimits  `hcl:"limits,block"`
}

// rawLimits is the limits block: policies.Limits and the peer watches'
// connection budget. Numbers are read as strings (HCL converts) so that a
// bad one is reported with its field.
type rawLimits struct {
	ContainerElements      *string `hcl:"container_elements"`
	ContainerPeers         *string `hcl:"container_peers"`
	ContainerServices      *string `hcl:"container_services"`
	NodeElements           *string `hcl:"node_elements"`
	NodePeerSets           *string `hcl:"node_peer_sets"`
	PeerSetAddresses       *string `hcl:"peer_set_addresses"`
	ConsulWatchConnections *string `hcl:"consul_watch_connections"`
}

type rawDocker struct {
	Host          *string `hcl:"host"`
	Network       *string `hcl:"network"`
	CreateNetwork *bool   `hcl:"create_network"`
	BridgeName    *string `hcl:"bridge_name"`
	PluginName    *string `hcl:"plugin_name"`
	PluginDir     *string `hcl:"plugin_dir"`
	// LabelsNamespace and LabelsChooseNamespace: see policies.Operator.
	LabelsNamespace       *string `hcl:"labels_namespace"`
	LabelsChooseNamespace *bool   `hcl:"labels_choose_namespace"`
}

type rawConsul struct {
	Enabled    *bool   `hcl:"enabled"`
	Address    *string `hcl:"address"`
	Token      *string `hcl:"token"`
	CAFile     *string `hcl:"ca_file"`
	CertFile   *string `hcl:"cert_file"`
	KeyFile    *string `hcl:"key_file"`
	IDPrefix   *string `hcl:"service_id_prefix"`
	Datacenter *string `hcl:"datacenter"`
}

type rawNomad struct {
	Enabled  *bool   `hcl:"enabled"`
	Address  *string `hcl:"address"`
	Token    *string `hcl:"token"`
	CAFile   *string `hcl:"ca_file"`
	CertFile *string `hcl:"cert_file"`
	KeyFile  *string `hcl:"key_file"`
	NodeID   *string `hcl:"node_id"`
	Region   *string `hcl:"region"`
}

type rawFW struct {
	Enabled   *bool     `hcl:"enabled"`
	NodePorts *[]string `hcl:"node_ports"`
}

type rawPeer struct {
	Name     string   `hcl:"name,label"`
	Prefixes []string `hcl:"prefixes"`
}

type rawNS struct {
	Name          string   `hcl:"name,label"`
	Peers         []string `hcl:"peers,optional"`
	AllowAny      bool     `hcl:"allow_any,optional"`
	AllowInternet bool     `hcl:"allow_internet,optional"`
	Prefixes      []string `hcl:"prefixes,optional"`
	IngressPorts  []string `hcl:"ingress_ports,optional"`
	EgressPorts   []string `hcl:"egress_ports,optional"`
	// ServiceNamespaces and Services: see policies.Bounds.
	ServiceNamespaces []string `hcl:"service_namespaces,optional"`
	Services          []string `hcl:"services,optional"`
	Tiers             []string `hcl:"tiers,optional"`
}

type rawService struct {
	Domain *string   `hcl:"domain"`
	Tags   *[]string `hcl:"tags"`
	Tiers  *[]string `hcl:"tiers"`
}

// Load reads path (if not empty) over the defaults, then applies the
// environment (getenv, usually os.Getenv). The result is not validated yet,
// because flags may still set fields: call Validate after applying them.
func Load(path string, getenv func(string) string) (Config, error) {
	c := Default()
	if path != "" {
		src, err := os.ReadFile(path) //nolint:gosec // G304: the operator names the config file on purpose
		if err != nil {
			return c, fmt.Errorf("reading config: %w", err)
		}
		if err := c.parse(path, src); err != nil {
			return c, err
		}
		c.Source = path
	}
	if err := c.applyEnv(getenv); err != nil {
		return c, err
	}
	return c, nil
}

// Parse reads HCL source over the defaults and validates it (used by
// `v6reg policy check -config`, tests and fuzzing).
func Parse(filename string, src []byte) (Config, error) {
	c := Default()
	c.Source = filename
	err := c.parse(filename, src)
	var fe *FieldError
	if err != nil && !errors.As(err, &fe) {
		return c, err // HCL syntax: field checks would only add noise
	}
	return c, errors.Join(err, c.Validate())
}

type position struct {
	file string
	body *hclsyntax.Body
}

// at returns "file:line" of the attribute at path (block names, then the
// attribute; labelled blocks as "type:label"), or the file alone.
func (p position) at(path ...string) string {
	body := p.body
	for i, step := range path {
		if body == nil {
			break
		}
		if i == len(path)-1 {
			if a, ok := body.Attributes[step]; ok {
				return fmt.Sprintf("%s:%d", p.file, a.SrcRange.Start.Line)
			}
			break
		}
		typ, label, _ := strings.Cut(step, ":")
		var next *hclsyntax.Body
		for _, b := range body.Blocks {
			if b.Type == typ && (label == "" || len(b.Labels) > 0 && b.Labels[0] == label) {
				next = b.Body
				break
			}
		}
		body = next
	}
	return p.file
}

func diagsError(diags hcl.Diagnostics) error {
	var errs []error
	for _, d := range diags {
		if d.Severity != hcl.DiagError {
			continue
		}
		where := ""
		if d.Subject != nil {
			where = fmt.Sprintf("%s:%d", d.Subject.Filename, d.Subject.Start.Line)
		}
		msg := d.Summary
		if d.Detail != "" {
			msg += ": " + strings.TrimSuffix(d.Detail, ".")
		}
		errs = append(errs, fmt.Errorf("%s: %s", where, msg))
	}
	return errors.Join(errs...)
}

func (c *Config) parse(filename string, src []byte) error {
	f, diags := hclsyntax.ParseConfig(src, filename, hcl.InitialPos)
	if diags.HasErrors() {
		return diagsError(diags)
	}
	var r raw
	if diags := gohcl.DecodeBody(f.Body, nil, &r); diags.HasErrors() {
		return diagsError(diags)
	}
	body, _ := f.Body.(*hclsyntax.Body)
	p := position{file: filename, body: body}
	var errs []error
	c.bad = map[string]bool{}
	fail := func(where, field, problem, fix string) {
		c.bad[field] = true
		errs = append(errs, &FieldError{Where: where, Field: field, Problem: problem, Fix: fix})
	}
	str := func(dst *string, v *string) {
		if v != nil {
			*dst = *v
		}
	}
	str(&c.NodeName, r.NodeName)
	str(&c.StateDir, r.StateDir)
	str(&c.APISocket, r.APISocket)
	str(&c.MetricsAddress, r.MetricsAddress)
	str(&c.LogFormat, r.LogFormat)
	if r.NodePrefix != nil {
		pfx, err := ParseNodePrefix(*r.NodePrefix)
		if err != nil {
			fail(p.at("node_prefix"), "node_prefix", err.Error(), prefixFix)
		}
		c.NodePrefix = pfx
	}
	if r.Gateway != nil && *r.Gateway != "" {
		a, err := netip.ParseAddr(*r.Gateway)
		if err != nil {
			fail(p.at("gateway"), "gateway", fmt.Sprintf("%q is not an IPv6 address", *r.Gateway), "write one address of node_prefix, e.g. 2001:db8:1:2:3::1")
		}
		c.Gateway = a
	}
	if r.IPv4Subnet != nil {
		pfx, err := netip.ParsePrefix(*r.IPv4Subnet)
		if err != nil || !pfx.Addr().Is4() {
			fail(p.at("ipv4_egress_subnet"), "ipv4_egress_subnet", fmt.Sprintf("%q is not an IPv4 prefix", *r.IPv4Subnet), "write a private IPv4 prefix such as 172.30.0.0/16")
		}
		c.IPv4Subnet = pfx
	}
	if r.Reserved != nil {
		c.Reserved = nil
		for _, s := range *r.Reserved {
			a, err := netip.ParseAddr(s)
			if err != nil {
				fail(p.at("reserved"), "reserved", fmt.Sprintf("%q is not an IP address", s), "list single IPv6 addresses of node_prefix")
				continue
			}
			c.Reserved = append(c.Reserved, a)
		}
	}
	dur := func(dst *time.Duration, v *string, name string) {
		if v == nil {
			return
		}
		d, err := time.ParseDuration(*v)
		if err != nil {
			fail(p.at(name), name, fmt.Sprintf("%q is not a duration", *v), `write a Go duration such as "1h" or "90s"`)
			return
		}
		*dst = d
	}
	dur(&c.HoldDown, r.HoldDown, "hold_down")
	dur(&c.ResyncInterval, r.ResyncInterval, "resync_interval")
	if r.LogLevel != nil {
		if err := c.LogLevel.UnmarshalText([]byte(*r.LogLevel)); err != nil {
			fail(p.at("log_level"), "log_level", fmt.Sprintf("%q is not a log level", *r.LogLevel), "use debug, info, warn or error")
		}
	}
	if r.Docker != nil {
		d := r.Docker
		str(&c.Docker.Host, d.Host)
		str(&c.Docker.Network, d.Network)
		str(&c.Docker.BridgeName, d.BridgeName)
		str(&c.Docker.PluginName, d.PluginName)
		str(&c.Docker.PluginDir, d.PluginDir)
		if d.CreateNetwork != nil {
			c.Docker.CreateNetwork = *d.CreateNetwork
		}
		str(&c.Policy.LabelsNamespace, d.LabelsNamespace)
		if d.LabelsChooseNamespace != nil {
			c.Policy.LabelsChooseNamespace = *d.LabelsChooseNamespace
		}
	}
	if r.Consul != nil {
		k := r.Consul
		if k.Enabled != nil {
			c.Consul.Enabled = *k.Enabled
		}
		str(&c.Consul.Address, k.Address)
		str(&c.Consul.Token, k.Token)
		str(&c.Consul.CAFile, k.CAFile)
		str(&c.Consul.CertFile, k.CertFile)
		str(&c.Consul.KeyFile, k.KeyFile)
		str(&c.Consul.IDPrefix, k.IDPrefix)
		str(&c.Consul.Datacenter, k.Datacenter)
	}
	if r.Nomad != nil {
		n := r.Nomad
		if n.Enabled != nil {
			c.Nomad.Enabled = *n.Enabled
		}
		str(&c.Nomad.Address, n.Address)
		str(&c.Nomad.Token, n.Token)
		str(&c.Nomad.CAFile, n.CAFile)
		str(&c.Nomad.CertFile, n.CertFile)
		str(&c.Nomad.KeyFile, n.KeyFile)
		str(&c.Nomad.NodeID, n.NodeID)
		str(&c.Nomad.Region, n.Region)
	}
	if r.Firewall != nil && r.Firewall.Enabled != nil {
		c.Firewall.Enabled = *r.Firewall.Enabled
	}
	if r.Firewall != nil && r.Firewall.NodePorts != nil {
		for _, s := range *r.Firewall.NodePorts {
			rule, err := parseNodePort(s)
			if err != nil {
				fail(p.at("firewall", "node_ports"), "firewall.node_ports", err.Error(), `write "udp/53", "tcp/8500-8502", "icmp" (ping) or "any"`)
				continue
			}
			c.Firewall.NodePorts = append(c.Firewall.NodePorts, rule)
		}
	}
	if r.InternalPrefixes != nil {
		for _, s := range *r.InternalPrefixes {
			pfx, err := netip.ParsePrefix(s)
			if err != nil || pfx.Addr().Is4In6() || pfx.Addr().Zone() != "" {
				fail(p.at("internal_prefixes"), "internal_prefixes", fmt.Sprintf("%q is not an IPv6 or IPv4 prefix", s), "list the operator's own prefixes of both families, e.g. 2001:db8::/32 and 198.51.100.0/24 (public IPv4 ranges of the datacenter; private ranges are never in @internet)")
				continue
			}
			c.Policy.Internal = append(c.Policy.Internal, pfx.Masked())
		}
	}
	definedPeers := map[string]bool{}
	for _, peer := range r.Peers {
		field := fmt.Sprintf("peer %q", peer.Name)
		where := p.at("peer:"+peer.Name, "prefixes")
		if !validName(peer.Name) {
			fail(where, field, "name must be lower-case letters, digits, '-' or '_'", "rename the peer set; jobs refer to it as @name")
		}
		if definedPeers[peer.Name] {
			fail(where, field, "defined twice", "merge the two peer blocks into one")
		}
		definedPeers[peer.Name] = true
		list := []netip.Prefix{}
		for _, s := range peer.Prefixes {
			pfx, err := parsePeerPrefix(s)
			if err != nil {
				fail(where, field+".prefixes", err.Error(), "write IPv6 (or, for egress, IPv4) prefixes such as 2001:db8:100::/56")
				continue
			}
			list = append(list, pfx)
		}
		c.Policy.Peers[peer.Name] = list
	}
	if len(r.Namespaces) > 0 {
		// Namespaces written in the file replace the default bounds.
		c.Policy.Namespaces = map[string]policies.Bounds{}
	}
	for _, ns := range r.Namespaces {
		field := fmt.Sprintf("namespace %q", ns.Name)
		if _, dup := c.Policy.Namespaces[ns.Name]; dup {
			fail(p.at("namespace:"+ns.Name), field, "defined twice", "merge the two namespace blocks into one")
		}
		b := policies.Bounds{AllowAny: ns.AllowAny, AllowInternet: ns.AllowInternet, ServiceNamespaces: ns.ServiceNamespaces, Services: ns.Services, Tiers: ns.Tiers}
		for _, name := range ns.Peers {
			b.Peers = append(b.Peers, strings.TrimPrefix(name, "@"))
		}
		for _, s := range ns.Prefixes {
			pfx, err := netip.ParsePrefix(s)
			if err != nil || !pfx.Addr().Is6() {
				fail(p.at("namespace:"+ns.Name, "prefixes"), field+" prefixes", fmt.Sprintf("%q is not an IPv6 prefix", s), "list the prefixes literal peers in jobs may lie in")
				continue
			}
			b.Prefixes = append(b.Prefixes, pfx.Masked())
		}
		for attr, dst := range map[string]*[]policies.PortRange{"ingress_ports": &b.IngressPorts, "egress_ports": &b.EgressPorts} {
			list := ns.IngressPorts
			if attr == "egress_ports" {
				list = ns.EgressPorts
			}
			for _, s := range list {
				pr, err := parsePortRange(s)
				if err != nil {
					fail(p.at("namespace:"+ns.Name, attr), field+" "+attr, err.Error(), `write ports as "443" or ranges as "8000-8100" (1 to 65535)`)
					continue
				}
				*dst = append(*dst, pr)
			}
		}
		c.Policy.Namespaces[ns.Name] = b
	}
	if s := r.Services; s != nil {
		str(&c.Policy.Services.Domain, s.Domain)
		if s.Tags != nil {
			c.Policy.Services.Tags = *s.Tags
		}
		if s.Tiers != nil {
			c.Policy.Services.Tiers = *s.Tiers
		}
	}
	if l := r.Limits; l != nil {
		for _, f := range []struct {
			name     string
			v        *string
			dst      *int
			min, max int
			fix      string
		}{
			{"container_elements", l.ContainerElements, &c.Policy.Limits.ContainerElements, 1, 10_000_000, "e.g. 4096: the firewall elements one container's policy may compile to"},
			{"container_peers", l.ContainerPeers, &c.Policy.Limits.ContainerPeers, 1, 10_000_000, "e.g. 32: the service:/job: peers one container may name"},
			{"container_services", l.ContainerServices, &c.Policy.Limits.ContainerServices, 1, 10_000_000, "e.g. 32: the services one container may declare"},
			{"node_elements", l.NodeElements, &c.Policy.Limits.NodeElements, 1, 10_000_000, "e.g. 100000: the firewall elements of the whole node"},
			{"node_peer_sets", l.NodePeerSets, &c.Policy.Limits.NodePeerSets, 1, 10_000_000, "e.g. 512: the service:/job: peers of the whole node"},
			{"peer_set_addresses", l.PeerSetAddresses, &c.Policy.Limits.PeerSetAddresses, 1, 10_000_000, "e.g. 2048: the addresses taken from one service:/job: peer"},
			{"consul_watch_connections", l.ConsulWatchConnections, &c.Consul.WatchConnections, peers.MinWatchConnections, peers.MaxWatchConnections,
				fmt.Sprintf("use %d to %d (default %d): Consul refuses a client more than 200 connections", peers.MinWatchConnections, peers.MaxWatchConnections, peers.DefaultWatchConnections)},
		} {
			if f.v == nil {
				continue
			}
			fix := f.fix
			if !strings.HasPrefix(fix, "use ") {
				fix = fmt.Sprintf("use %d to %d, %s", f.min, f.max, fix)
			}
			n, err := strconv.Atoi(strings.TrimSpace(*f.v))
			if err != nil {
				fail(p.at("limits", f.name), "limits."+f.name, fmt.Sprintf("%q is not a whole number", *f.v), fix)
				continue
			}
			if n < f.min || n > f.max {
				fail(p.at("limits", f.name), "limits."+f.name, fmt.Sprintf("%d is out of range", n), fix)
				continue
			}
			*f.dst = n
		}
	}
	c.pos = p
	return errors.Join(errs...)
}

const prefixFix = "write the IPv6 prefix routed to this node, e.g. 2001:db8:1:2:3::/80 (lengths /64 to /112)"

// ParseNodePrefix parses and checks a node prefix. Lengths outside
// /64../112 are refused: shorter than /64 claims more than one LAN's worth
// of space (other nodes' addresses); longer than /112 leaves fewer than
// 65536 addresses, too few for unpredictable picks and an hour of hold-down.
func ParseNodePrefix(s string) (netip.Prefix, error) {
	pfx, err := netip.ParsePrefix(strings.TrimSpace(s))
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an IPv6 prefix", s)
	}
	a := pfx.Addr()
	switch {
	case !a.Is6() || a.Is4In6():
		return netip.Prefix{}, fmt.Errorf("%q is not an IPv6 prefix", s)
	case a.Zone() != "":
		return netip.Prefix{}, fmt.Errorf("%q carries a zone", s)
	case pfx.Bits() < 64 || pfx.Bits() > 112:
		return netip.Prefix{}, fmt.Errorf("/%d is outside /64../112 (shorter claims other nodes' space; longer leaves too few addresses for hold-down)", pfx.Bits())
	case pfx.Masked() != pfx:
		return netip.Prefix{}, fmt.Errorf("%q has host bits set (the prefix is %s)", s, pfx.Masked())
	case a.IsMulticast() || a.IsLinkLocalUnicast() || a.IsLoopback() || a.IsUnspecified():
		return netip.Prefix{}, fmt.Errorf("%q is not a unicast prefix a node can be routed", s)
	}
	return pfx, nil
}

func parsePeerPrefix(s string) (netip.Prefix, error) {
	pfx, err := netip.ParsePrefix(s)
	if err != nil {
		a, aerr := netip.ParseAddr(s)
		if aerr != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not a prefix", s)
		}
		pfx = netip.PrefixFrom(a, a.BitLen())
	}
	if pfx.Addr().Zone() != "" || pfx.Addr().Is4In6() {
		return netip.Prefix{}, fmt.Errorf("%q is not a plain IPv6 or IPv4 prefix", s)
	}
	return pfx.Masked(), nil
}

// parseNodePort reads "tcp/8500-8502", "udp/53", "icmp" or "any".
func parseNodePort(s string) (firewall.Rule, error) {
	proto, ports, hasPorts := strings.Cut(strings.TrimSpace(s), "/")
	r := firewall.Rule{Peer: firewall.PeerAny}
	switch proto {
	case "tcp":
		r.Proto = firewall.TCP
	case "udp":
		r.Proto = firewall.UDP
	case "icmp":
		r.Proto = firewall.ICMP
	case "any":
		r.Proto = firewall.Any
	default:
		return r, fmt.Errorf("%q: protocol must be tcp, udp, icmp or any", s)
	}
	if !hasPorts {
		return r, nil
	}
	if r.Proto != firewall.TCP && r.Proto != firewall.UDP {
		return r, fmt.Errorf("%q: only tcp and udp take ports", s)
	}
	for _, part := range strings.Split(ports, ",") {
		pr, err := parsePortRange(part)
		if err != nil {
			return r, fmt.Errorf("%q: %w", s, err)
		}
		r.Ports = append(r.Ports, firewall.PortRange{First: pr.From, Last: pr.To})
	}
	return r, nil
}

func parsePortRange(s string) (policies.PortRange, error) {
	lo, hi, isRange := strings.Cut(strings.TrimSpace(s), "-")
	if !isRange {
		hi = lo
	}
	a, err1 := strconv.ParseUint(lo, 10, 16)
	b, err2 := strconv.ParseUint(hi, 10, 16)
	if err1 != nil || err2 != nil || a == 0 || a > b {
		return policies.PortRange{}, fmt.Errorf("%q is not a port or port range", s)
	}
	return policies.PortRange{From: uint16(a), To: uint16(b)}, nil
}

func validName(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for _, r := range s {
		if !validNameRune(r) {
			return false
		}
	}
	return true
}

// validNameRune says whether r may appear in a name: a-z, 0-9, '-' or '_'.
func validNameRune(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_'
}

// applyEnv applies the usual CONSUL_*, NOMAD_* and DOCKER_HOST variables
// and V6REG_NODE_PREFIX over the file.
func (c *Config) applyEnv(getenv func(string) string) error {
	set := func(dst *string, name string) {
		if v := getenv(name); v != "" {
			*dst = v
		}
	}
	set(&c.Docker.Host, "DOCKER_HOST")
	set(&c.Consul.Address, "CONSUL_HTTP_ADDR")
	set(&c.Consul.Token, "CONSUL_HTTP_TOKEN")
	set(&c.Consul.CAFile, "CONSUL_CACERT")
	set(&c.Consul.CertFile, "CONSUL_CLIENT_CERT")
	set(&c.Consul.KeyFile, "CONSUL_CLIENT_KEY")
	set(&c.Nomad.Address, "NOMAD_ADDR")
	set(&c.Nomad.Token, "NOMAD_TOKEN")
	set(&c.Nomad.CAFile, "NOMAD_CACERT")
	set(&c.Nomad.CertFile, "NOMAD_CLIENT_CERT")
	set(&c.Nomad.KeyFile, "NOMAD_CLIENT_KEY")
	set(&c.Nomad.Region, "NOMAD_REGION")
	if v := getenv("V6REG_NODE_PREFIX"); v != "" {
		pfx, err := ParseNodePrefix(v)
		if err != nil {
			return &FieldError{Where: "env V6REG_NODE_PREFIX", Field: "node_prefix", Problem: err.Error(), Fix: prefixFix}
		}
		c.NodePrefix = pfx
	}
	return nil
}

// Validate checks every field and how fields relate; call it once, after
// flags are applied. Errors name the file and line where a field was set.
func (c *Config) Validate() error {
	return errors.Join(c.validate(c.pos)...)
}

func (c *Config) validate(p position) []error {
	var errs []error
	fail := func(field, problem, fix string, path ...string) {
		if c.bad[field] {
			return
		}
		errs = append(errs, &FieldError{Where: p.at(path...), Field: field, Problem: problem, Fix: fix})
	}
	if !c.NodePrefix.IsValid() {
		if !c.Dev {
			fail("node_prefix", "not set", prefixFix+"; or run `v6reg agent -dev` for a local ULA prefix", "node_prefix")
		}
	} else {
		if c.Gateway.IsValid() && !c.NodePrefix.Contains(c.Gateway) {
			fail("gateway", fmt.Sprintf("%s is outside node_prefix %s", c.Gateway, c.NodePrefix), "pick an address inside node_prefix, or leave it out for prefix::1", "gateway")
		}
		for _, a := range c.Reserved {
			if !c.NodePrefix.Contains(a) && !c.IPv4Subnet.Contains(a) {
				fail("reserved", fmt.Sprintf("%s is in neither node_prefix %s nor ipv4_egress_subnet %s", a, c.NodePrefix, c.IPv4Subnet), "remove it or fix the address", "reserved")
			}
		}
	}
	if c.IPv4Subnet.IsValid() {
		if !c.IPv4Subnet.Addr().IsPrivate() {
			fail("ipv4_egress_subnet", fmt.Sprintf("%s is not a private (RFC 1918) prefix", c.IPv4Subnet), "containers reach IPv4 through the node's NAT; use e.g. 172.30.0.0/16", "ipv4_egress_subnet")
		} else if c.IPv4Subnet.Bits() > 28 {
			fail("ipv4_egress_subnet", fmt.Sprintf("/%d leaves too few IPv4 addresses", c.IPv4Subnet.Bits()), "use a /28 or shorter (a /16 is typical)", "ipv4_egress_subnet")
		}
	}
	if c.HoldDown < 0 {
		fail("hold_down", "is negative", `use "0s" to disable hold-down (not recommended) or e.g. "1h"`, "hold_down")
	}
	if c.ResyncInterval < time.Second {
		fail("resync_interval", fmt.Sprintf("%s is shorter than 1s", c.ResyncInterval), `use e.g. "60s"`, "resync_interval")
	}
	if !filepath.IsAbs(c.StateDir) {
		fail("state_dir", fmt.Sprintf("%q is not an absolute path", c.StateDir), "use e.g. /var/lib/v6reg", "state_dir")
	}
	if !filepath.IsAbs(c.APISocket) {
		fail("api_socket", fmt.Sprintf("%q is not an absolute path", c.APISocket), "use e.g. /run/v6reg/v6reg.sock", "api_socket")
	}
	if c.MetricsAddress != "" {
		ap, err := netip.ParseAddrPort(c.MetricsAddress)
		if err != nil || !ap.Addr().IsLoopback() {
			fail("metrics_address", fmt.Sprintf("%q is not a loopback address:port", c.MetricsAddress), `metrics stay on the node; use e.g. "127.0.0.1:9466", or "" to disable`, "metrics_address")
		}
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		fail("log_format", fmt.Sprintf("%q is not a log format", c.LogFormat), "use text or json", "log_format")
	}
	if c.Docker.Network == "" {
		fail("docker.network", "is empty", "name the Docker network v6reg serves, e.g. v6reg", "docker", "network")
	}
	if !validName(c.Docker.PluginName) {
		fail("docker.plugin_name", fmt.Sprintf("%q is not a plugin name", c.Docker.PluginName), "use lower-case letters, digits, '-' or '_'; jobs never see it", "docker", "plugin_name")
	}
	if len(c.Docker.BridgeName) > 15 {
		fail("docker.bridge_name", fmt.Sprintf("%q is longer than 15 characters", c.Docker.BridgeName), "Linux interface names have at most 15 characters", "docker", "bridge_name")
	}
	if !strings.HasPrefix(c.Docker.Host, "unix://") && !strings.HasPrefix(c.Docker.Host, "tcp://") {
		fail("docker.host", fmt.Sprintf("%q is not a Docker host", c.Docker.Host), "use unix:///var/run/docker.sock", "docker", "host")
	}
	if c.Consul.Enabled && c.Consul.Address == "" {
		fail("consul.address", "is empty", "set it (or CONSUL_HTTP_ADDR), or set consul { enabled = false }", "consul", "address")
	}
	if c.Consul.IDPrefix == "" || strings.ContainsAny(c.Consul.IDPrefix, "/ ") {
		fail("consul.service_id_prefix", fmt.Sprintf("%q is not usable", c.Consul.IDPrefix), "use a short word such as v6reg; it marks the registrations v6reg owns", "consul", "service_id_prefix")
	}
	if c.Nomad.Enabled && c.Nomad.Address == "" {
		fail("nomad.address", "is empty", "set it (or NOMAD_ADDR), or set nomad { enabled = false }", "nomad", "address")
	}
	names := make([]string, 0, len(c.Policy.Namespaces))
	for n := range c.Policy.Namespaces {
		names = append(names, n)
	}
	sort.Strings(names)
	positioned := len(errs)
	for _, n := range names {
		for _, name := range c.Policy.Namespaces[n].Peers {
			if _, ok := c.Policy.Peers[name]; !ok && name != "internet" {
				fail(fmt.Sprintf("namespace %q peers", n), fmt.Sprintf("@%s is not defined", name), "define it with a peer block, or remove it", "namespace:"+n, "peers")
			}
		}
	}
	// The policy package checks the rest (templates, overlaps); its
	// messages name the block, the file names the place.
	if len(errs) == positioned {
		if err := c.Policy.Validate(); err != nil {
			for _, line := range strings.Split(err.Error(), "\n") {
				errs = append(errs, &FieldError{Where: p.file, Field: "policy", Problem: line})
			}
		}
	}
	return errs
}

// LoadPolicy reads the policy part of an agent config file (peer sets,
// namespace bounds, tag templates) for `v6reg policy check -config`: the
// rest of the file must parse, but need not be complete for this node.
func LoadPolicy(path string) (policies.Operator, error) {
	src, err := os.ReadFile(path) //nolint:gosec // G304: the operator names the config file on purpose
	if err != nil {
		return policies.Operator{}, fmt.Errorf("reading config: %w", err)
	}
	c := Default()
	if err := c.parse(path, src); err != nil {
		return c.Policy, err
	}
	return c.Policy, c.Policy.Validate()
}
