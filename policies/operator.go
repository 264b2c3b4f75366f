package policies

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"path"
	"slices"
	"strings"
	"sync"
	"text/template"
)

// Operator is the part of the agent configuration that policies depend on.
// It is plain data: the config package decodes the HCL file into it, and
// Validate checks it once at start.
type Operator struct {
	// Peers are the "@name" sets, keyed without '@'. A set may be empty: it
	// then matches nothing (a name the operator has not filled in yet).
	// "internet", if absent, is GlobalUnicast and PublicIPv4 minus
	// Internal. Sets may hold IPv4 prefixes (for dual-stack egress); rules
	// cannot.
	Peers map[string][]netip.Prefix
	// Internal are the operator's own prefixes, IPv6 and IPv4, excluded
	// from @internet so that a job allowed the internet is not thereby
	// allowed the datacenter (its public IPv4 ranges included).
	Internal []netip.Prefix
	// Namespaces bounds what the jobs of each Nomad namespace may ask for;
	// the key "*" applies to namespaces not listed. A namespace with no
	// bounds (not listed and no "*") may declare no rules at all.
	Namespaces map[string]Bounds
	Services   ServiceTemplates
	// Limits bound the firewall elements and Consul-backed peers of one
	// container and of the node (see limits.go).
	Limits Limits
	// LabelsNamespace is the namespace of containers started without
	// Nomad (policy from labels); empty means "default". Their
	// v6reg.namespace label may name another only if LabelsChooseNamespace:
	// whoever can run a container must not pick another tenant's bounds
	// and service names by writing a label.
	LabelsNamespace       string
	LabelsChooseNamespace bool
}

// Bounds is what the jobs of one namespace may ask for. A rule outside the
// bounds is refused with an error that names the bound and the namespace.
type Bounds struct {
	// Peers are the @names (without '@') rules may use; empty means every
	// defined set. @internet is governed by AllowInternet instead.
	Peers []string
	// AllowAny permits the peer "any" (and a literal ::/0).
	AllowAny bool
	// AllowInternet permits @internet.
	AllowInternet bool
	// Prefixes: a literal prefix in a rule must lie inside one of these;
	// empty means literal prefixes are refused.
	Prefixes []netip.Prefix
	// IngressPorts and EgressPorts bound the ports of tcp and udp rules; a
	// rule's ports must all lie inside them, and "any" is refused when they
	// are set. Empty means any port.
	IngressPorts, EgressPorts []PortRange
	// ServiceNamespaces are the other namespaces whose services rules may
	// name as service:NS/NAME ("*": every namespace); empty means none.
	// service:NAME is always the namespace's own NAME.
	ServiceNamespaces []string
	// Services are the patterns (path.Match: '*', '?', [a-z]) of the
	// service names the namespace may register in v6reg_services; empty
	// means any name. Names starting with "v6reg-" are v6reg's own and
	// never allowed.
	Services []string
	// Tiers, if set, are the tiers the namespace's services may be
	// registered with: the tier names Traefik routers and hosts
	// (TIER-SERVICE), so a dev job must not take a production one.
	Tiers []string
}

// Exposures are what a valid configuration still lets one namespace's
// jobs do to another's, for the agent to say at start and on reload:
//
//   - a namespace whose services are unbounded may register any service
//     name, so with more than one namespace running jobs, a job in one can
//     join another's Consul service (its DNS name: Consul's service names
//     are global), and with its tiers unbounded too, take its Traefik host
//     (TIER-SERVICE);
//   - @internet without internal_prefixes includes the operator's own
//     addresses outside the node (other nodes, Consul and Nomad servers).
func (o Operator) Exposures() []string {
	var out []string
	var names, hosts []string
	for _, ns := range slices.Sorted(maps.Keys(o.Namespaces)) {
		b := o.Namespaces[ns]
		if len(b.Services) > 0 {
			continue
		}
		if len(b.Tiers) == 0 {
			hosts = append(hosts, fmt.Sprintf("%q", ns))
		} else {
			names = append(names, fmt.Sprintf("%q", ns))
		}
	}
	if len(hosts) > 0 {
		out = append(out, fmt.Sprintf("namespace %s may register any service name with any tier: a job there can join another namespace's Consul service (its DNS name) and take its Traefik host (TIER-SERVICE); bound services or tiers per namespace", strings.Join(hosts, ", ")))
	}
	if len(names) > 0 {
		out = append(out, fmt.Sprintf("namespace %s may register any service name: a job there can join another namespace's Consul service (its DNS name; Consul's service names are global); bound services per namespace", strings.Join(names, ", ")))
	}
	if len(o.Internal) == 0 {
		for _, ns := range slices.Sorted(maps.Keys(o.Namespaces)) {
			if o.Namespaces[ns].AllowInternet {
				out = append(out, fmt.Sprintf("namespace %q may use @internet and internal_prefixes is empty: @internet includes this site's own addresses (other nodes, Consul, Nomad); list them in internal_prefixes", ns))
				break
			}
		}
	}
	return out
}

// ReservedServicePrefix starts the Consul service names v6reg registers
// itself (v6reg-jobs, v6reg-policy-errors): a job may not register one,
// or it could add itself to every job: peer.
const ReservedServicePrefix = "v6reg-"

// serviceNamespaceAllowed says whether b lets rules name services of ns.
func (b Bounds) serviceNamespaceAllowed(ns string) bool {
	return slices.Contains(b.ServiceNamespaces, ns) || slices.Contains(b.ServiceNamespaces, "*")
}

// serviceAllowed says whether b lets the namespace register name.
func (b Bounds) serviceAllowed(name string) bool {
	if len(b.Services) == 0 {
		return true
	}
	for _, pat := range b.Services {
		if ok, err := path.Match(pat, name); err == nil && ok {
			return true
		}
	}
	return false
}

// ServiceTemplates make the Consul tags of every v6reg_services entry.
type ServiceTemplates struct {
	// Domain is offered to the templates as .Domain.
	Domain string
	// Tags are text/template texts executed over TagData, one tag each;
	// a tag that renders empty (after trimming spaces) is left out, so a
	// template can be conditional: {{if eq .Check "http"}}...{{end}}.
	Tags []string
	// Tiers, if set, are the only tier values allowed; the job name prefix
	// before the first '-' counts as the tier only if it is one of them.
	// If empty, that prefix is always the tier.
	Tiers []string
}

// TagData is what tag templates see.
type TagData struct {
	Namespace, Job, Group, Task string
	AllocID, ShortAllocID       string
	Service                     string
	Port                        int
	Check                       string // "tcp", "http" or "https"
	Tier, Domain                string
	// Name is "TIER-SERVICE", or just SERVICE when there is no tier: a
	// router and host name unique across tiers.
	Name string
}

// DefaultOperator is what `v6reg policy check` uses without -config and
// what an empty config file starts from. Its sets are defined but empty (they
// match nothing until the operator fills them), and its one bound lets every
// namespace use them, @internet, and literal global or ULA prefixes.
func DefaultOperator() Operator {
	return Operator{
		Peers: map[string][]netip.Prefix{
			"traefik":    {},
			"monitoring": {},
			"ops":        {},
			"dns":        {},
		},
		Namespaces: map[string]Bounds{
			"*": {
				AllowInternet: true,
				Prefixes:      []netip.Prefix{GlobalUnicast, netip.MustParsePrefix("fc00::/7")},
			},
		},
		Limits: DefaultLimits(),
		Services: ServiceTemplates{
			Domain: "cloud.example",
			Tags: []string{
				`{{if ne .Check "tcp"}}traefik.enable=true{{end}}`,
				"{{if ne .Check \"tcp\"}}traefik.http.routers.{{.Name}}.rule=Host(`{{.Name}}.{{.Domain}}`){{end}}",
				`{{if eq .Check "https"}}traefik.http.services.{{.Name}}.loadbalancer.server.scheme=https{{end}}`,
			},
		},
	}
}

// BoundsFor returns the bounds of a namespace: its own, else "*".
func (o Operator) BoundsFor(namespace string) (Bounds, bool) {
	if b, ok := o.Namespaces[namespace]; ok {
		return b, true
	}
	b, ok := o.Namespaces["*"]
	return b, ok
}

// InternetPrefixes is @internet: the operator's "internet" set if it
// defines one, else GlobalUnicast and PublicIPv4 minus Internal: both
// families, since containers have dual-stack egress.
func (o Operator) InternetPrefixes() []netip.Prefix {
	if ps, ok := o.Peers["internet"]; ok {
		return NormalizePrefixes(ps)
	}
	return SubtractPrefixes(append([]netip.Prefix{GlobalUnicast}, PublicIPv4...), o.Internal)
}

func (o Operator) hasSet(name string) bool {
	_, ok := o.Peers[name]
	return ok || name == "internet"
}

func (o Operator) setNames() []string {
	names := make([]string, 0, len(o.Peers)+1)
	for n := range o.Peers {
		names = append(names, n)
	}
	if _, ok := o.Peers["internet"]; !ok {
		names = append(names, "internet")
	}
	slices.Sort(names)
	return names
}

// Validate checks the whole configuration and returns every problem, each
// saying which field and what to write instead.
func (o Operator) Validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	checkPrefixes := func(where string, ps []netip.Prefix) {
		for _, p := range ps {
			switch {
			case !p.IsValid():
				add("%s: invalid prefix %v", where, p)
			case p != p.Masked():
				add("%s: prefix %s has bits set after /%d; write %s", where, p, p.Bits(), p.Masked())
			}
		}
	}
	for _, name := range slices.Sorted(maps.Keys(o.Peers)) {
		if !validName(name) {
			add("peers %q: invalid set name; use letters, digits, '-', '_' and '.', without '@'", name)
		}
		checkPrefixes(fmt.Sprintf("peers %q", name), o.Peers[name])
	}
	checkPrefixes("internal", o.Internal)
	errs = append(errs, o.Limits.Validate()...)
	if o.LabelsNamespace != "" && !ValidNamespace(o.LabelsNamespace) {
		add("docker: labels_namespace: %q is not a namespace name; use letters, digits and '-'", o.LabelsNamespace)
	}
	internet := o.InternetPrefixes()
	for _, ns := range slices.Sorted(maps.Keys(o.Namespaces)) {
		b := o.Namespaces[ns]
		where := fmt.Sprintf("namespace %q", ns)
		for _, n := range b.Peers {
			name := strings.TrimPrefix(n, "@")
			if !o.hasSet(name) {
				add("%s: peers: @%s is not defined; the defined sets are %s", where, name, atNames(o.setNames()))
			} else if name == "internet" {
				add("%s: peers: @internet is governed by allow_internet; remove it from peers", where)
			}
		}
		checkPrefixes(where+": prefixes", b.Prefixes)
		for _, n := range b.ServiceNamespaces {
			if n != "*" && !ValidNamespace(n) {
				add("%s: service_namespaces: %q is not a namespace name; use letters, digits and '-', or \"*\" for every namespace", where, n)
			}
		}
		for _, t := range b.Tiers {
			if !validServiceName(t) {
				add("%s: tiers: invalid tier %q; tiers are lower case letters, digits and '-'", where, t)
			}
		}
		for _, pat := range b.Services {
			if _, err := path.Match(pat, ""); err != nil || pat == "" {
				add("%s: services: %q is not a pattern; write names with '*', '?' or [a-z], like \"shop-*\"", where, pat)
			}
		}
		if !b.AllowAny && prefixesContain(b.Prefixes, netip.MustParsePrefix("::/0")) {
			add("%s: prefixes cover ::/0, which allows any peer while allow_any is false", where)
		}
		if !b.AllowInternet {
			for _, p := range b.Prefixes {
				if overlapsAny(internet, p) {
					add("%s: prefix %s overlaps @internet while allow_internet is false; list only internal prefixes", where, p)
				}
			}
		}
		for dir, rs := range map[string][]PortRange{"ingress_ports": b.IngressPorts, "egress_ports": b.EgressPorts} {
			for _, r := range rs {
				if r.From == 0 || r.From > r.To {
					add("%s: %s: invalid port range %d-%d; ports range from 1 to 65535, low to high", where, dir, r.From, r.To)
				}
			}
		}
	}
	for _, t := range o.Services.Tiers {
		if !validServiceName(t) {
			add("services: tiers: invalid tier %q; tiers are lower case letters, digits and '-'", t)
		}
	}
	if _, err := o.Services.compile(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func overlapsAny(ps []netip.Prefix, p netip.Prefix) bool {
	for _, q := range ps {
		if q.Overlaps(p) {
			return true
		}
	}
	return false
}

func atNames(names []string) string {
	if len(names) == 0 {
		return "(none)"
	}
	s := make([]string, len(names))
	for i, n := range names {
		s[i] = "@" + n
	}
	return strings.Join(s, ", ")
}

// compile parses the tag templates and runs them once over sample data, so
// that a misspelt field fails at config validation, not at container start.
func (t ServiceTemplates) compile() ([]*template.Template, error) {
	// Parsing is most of an evaluation's cost (about 1 ms for the
	// default tags), and the agent evaluates every container with the
	// same few configurations: compiled templates are kept by their
	// text. Executing a parsed template concurrently is safe.
	key := t.Domain + "\x00" + strings.Join(t.Tags, "\x00")
	compiledMu.Lock()
	c, ok := compiledTemplates[key]
	compiledMu.Unlock()
	if ok {
		return c.tpls, c.err
	}
	tpls, err := t.compileNow()
	compiledMu.Lock()
	if len(compiledTemplates) >= 16 { // configurations come and go by SIGHUP: keep the recent few
		clear(compiledTemplates)
	}
	compiledTemplates[key] = compiledTags{tpls, err}
	compiledMu.Unlock()
	return tpls, err
}

type compiledTags struct {
	tpls []*template.Template
	err  error
}

var (
	compiledMu        sync.Mutex
	compiledTemplates = map[string]compiledTags{}
)

func (t ServiceTemplates) compileNow() ([]*template.Template, error) {
	var errs []error
	out := make([]*template.Template, 0, len(t.Tags))
	sample := TagData{Namespace: "default", Job: "p-web", Group: "web", Task: "web", AllocID: "00000000-0000-0000-0000-000000000000",
		ShortAllocID: "00000000", Service: "web", Port: 8080, Check: "http", Tier: "p", Domain: t.Domain, Name: "p-web"}
	for i, text := range t.Tags {
		tpl, err := template.New(fmt.Sprintf("tags[%d]", i)).Option("missingkey=error").Parse(text)
		if err == nil {
			err = tpl.Execute(&strings.Builder{}, sample)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("services: tags[%d] %q: %w", i, text, err))
			continue
		}
		out = append(out, tpl)
	}
	return out, errors.Join(errs...)
}

// ValidNamespace says whether ns is a name Nomad could give a namespace.
func ValidNamespace(ns string) bool {
	if ns == "" || len(ns) > 128 {
		return false
	}
	for i := 0; i < len(ns); i++ {
		c := ns[i]
		if (c < 'a' || c > 'z') && (c < 'A' || c > 'Z') && (c < '0' || c > '9') && c != '-' {
			return false
		}
	}
	return true
}
