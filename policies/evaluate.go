package policies

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"text/template"
)

// Context says whose policy is evaluated: it decides the bounds (Namespace),
// the tier (Job), what job:NAME means (Namespace) and what tag templates see.
type Context struct {
	Namespace, Job, Group, Task, AllocID string
}

// ResolvedRule is a rule as the firewall needs it.
type ResolvedRule struct {
	Proto Proto
	// Ports as in Rule: merged, AllPorts when none were written, nil for
	// icmp and any.
	Ports []PortRange
	// Prefixes are the literal prefixes, the @sets and "any" (::/0 and
	// 0.0.0.0/0) resolved and normalized. Sets may hold IPv4 prefixes.
	Prefixes []netip.Prefix
	// Services and Jobs are the service:NAME and job:NAME peers, sorted
	// (a service of another namespace as NS/NAME),
	// left for the agent to fill from Consul and Nomad (a job is looked up
	// in the Context's namespace).
	Services, Jobs []string
	// Source is the rule in canonical form, for status and explain.
	Source string
}

// ServiceSpec is one Consul service to register for the container.
type ServiceSpec struct {
	Name  string
	Port  uint16
	Check CheckKind
	Path  string // what an http(s) check asks for: Service.CheckPath
	Tags  []string
}

// Policy is the evaluated policy of one task or container. Nil Ingress and
// Egress deny everything.
type Policy struct {
	Ingress, Egress []ResolvedRule
	Services        []ServiceSpec
	Tier            string
}

var (
	anyPrefixes = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}
	allV6       = netip.MustParsePrefix("::/0")
)

// Evaluate parses, bounds and resolves the merged meta of one task. It
// returns every error, each located at the level and key that caused it.
// The Policy then holds only what was valid, for display: when errors is not
// empty the agent must keep the container closed and register nothing.
func Evaluate(m Meta, ctx Context, op Operator) (Policy, []*Error) {
	if ctx.Namespace == "" {
		ctx.Namespace = "default"
	}
	e := &evaluator{ctx: ctx, op: op}
	for _, err := range m.errs {
		e.add(err, Value{Level: err.Level, Key: err.Key})
	}
	var pol Policy
	bounds, hasBounds := op.BoundsFor(ctx.Namespace)
	for _, d := range []struct {
		v   Value
		dir Direction
		out *[]ResolvedRule
	}{{m.Ingress, Ingress, &pol.Ingress}, {m.Egress, Egress, &pol.Egress}} {
		if !d.v.Set() {
			continue
		}
		rules, errs := ParseRules(d.v.Text, d.dir)
		for _, err := range errs {
			e.add(err, d.v)
		}
		if len(rules) > 0 && !hasBounds {
			e.add(&Error{Msg: fmt.Sprintf("namespace %q has no bounds in the agent config, and there is no \"*\" default", ctx.Namespace),
				Hint: "ask the operator to add the namespace to the config"}, d.v)
			continue
		}
		for _, r := range rules {
			if rr, ok := e.resolve(r, bounds, d.v); ok {
				*d.out = append(*d.out, rr)
			}
		}
	}
	pol.Tier = e.tier(m.Tier)
	if m.Services.Set() {
		pol.Services = e.services(m.Services, pol.Tier, bounds)
		if len(pol.Services) > 0 && len(bounds.Tiers) > 0 && !slices.Contains(bounds.Tiers, pol.Tier) {
			v, what := m.Services, fmt.Sprintf("the job's tier %q (from its name)", pol.Tier)
			if m.Tier.Set() {
				v, what = m.Tier, fmt.Sprintf("tier %q", pol.Tier)
			}
			if pol.Tier == "" {
				what = "no tier"
			}
			e.add(&Error{Msg: fmt.Sprintf("services with %s are not allowed in namespace %q (its tiers: %s)", what, ctx.Namespace, strings.Join(bounds.Tiers, ", ")),
				Hint: "set v6reg_tier to one of them, or ask the operator"}, v)
			pol.Services = nil
		}
	}
	return pol, e.errs
}

type evaluator struct {
	ctx      Context
	op       Operator
	errs     []*Error
	internet []netip.Prefix // computed on first use
	// perValue counts the errors of each value (level and key); past
	// MaxErrorsPerValue they are counted in one last error, more[value].
	perValue map[string]int
	more     map[string]*Error
}

// MaxErrorsPerValue bounds the errors reported for one meta value or
// label: a value of hundreds of broken rules would otherwise give
// hundreds of errors, in the agent's memory, its status API and a Consul
// check, for every reconcile. The rest are counted in one more error.
const MaxErrorsPerValue = 10

// add locates err at the level and key of v.
func (e *evaluator) add(err *Error, v Value) {
	err.Level, err.Key = v.Level, v.Key
	switch v.Level {
	case LevelJob:
		err.Job = e.ctx.Job
	case LevelGroup:
		err.Job, err.Group = e.ctx.Job, e.ctx.Group
	case LevelTask:
		err.Job, err.Group, err.Task = e.ctx.Job, e.ctx.Group, e.ctx.Task
	}
	if e.perValue == nil {
		e.perValue, e.more = map[string]int{}, map[string]*Error{}
	}
	k := strconv.Itoa(int(v.Level)) + "\x00" + v.Key
	e.perValue[k]++
	switch n := e.perValue[k]; {
	case n <= MaxErrorsPerValue:
		e.errs = append(e.errs, err)
	case n == MaxErrorsPerValue+1:
		more := *err
		more.Column, more.Text, more.Hint = 0, "", "fix the errors above first; the rest are likely the same mistakes"
		e.more[k] = &more
		e.errs = append(e.errs, &more)
		fallthrough
	default:
		e.more[k].Msg = fmt.Sprintf("%d more errors in this value are not shown", n-MaxErrorsPerValue)
	}
}

func (e *evaluator) resolve(r Rule, b Bounds, v Value) (ResolvedRule, bool) {
	ns := e.ctx.Namespace
	ok := true
	fail := func(col int, text, hint, format string, args ...any) {
		e.add(&Error{Column: col, Text: text, Msg: fmt.Sprintf(format, args...), Hint: hint}, v)
		ok = false
	}
	bound, boundName := b.IngressPorts, "ingress_ports"
	if r.Dir == Egress {
		bound, boundName = b.EgressPorts, "egress_ports"
	}
	if len(bound) > 0 {
		allowed := formatPorts(bound)
		switch {
		case r.Proto == Any:
			fail(r.Col, "any", "name the protocol and ports: tcp/PORTS", "%s allows %s ports %s only in namespace %q, and 'any' is every port", boundName, r.Dir, allowed, ns)
		case r.Proto.hasPorts():
			for _, pr := range r.Ports {
				if !slices.ContainsFunc(bound, func(br PortRange) bool { return br.Contains(pr) }) {
					col, text := r.PortsCol, pr.String()
					if col == 0 {
						col, text = r.Col, r.Proto.String()
					}
					what := "port " + pr.String() + " is"
					if pr == AllPorts && r.PortsCol == 0 {
						what = "all ports are"
					} else if pr.From != pr.To {
						what = "ports " + pr.String() + " are"
					}
					fail(col, text, "use ports inside "+allowed+", or ask the operator to widen "+boundName, "%s outside %s of namespace %q", what, boundName, ns)
				}
			}
		}
	}
	if n := portCount(r.Ports); r.Proto.hasPorts() && n > MaxRulePorts && !isAllPorts(r.Ports) {
		fail(r.PortsCol, formatPorts(r.Ports), "write fewer ports, or no ports for all of them (tcp from ...)",
			"the rule covers %d ports; a rule may name at most %d (each port is a firewall element)", n, MaxRulePorts)
	}
	rr := ResolvedRule{Proto: r.Proto, Ports: r.Ports, Source: r.String()}
	var prefixes []netip.Prefix
	for _, p := range r.Peers {
		switch p.Kind {
		case PeerAny:
			if !b.AllowAny {
				fail(p.Col, "any", "name the peers: @name, service:NAME, job:NAME or a prefix", "'any' is not allowed in namespace %q (allow_any is false)", ns)
				continue
			}
			prefixes = append(prefixes, anyPrefixes...)
		case PeerSet:
			if !e.op.hasSet(p.Name) {
				names := e.op.setNames()
				hint := "the defined sets are " + atNames(names)
				if c, ok := closest(p.Name, names); ok {
					hint = "did you mean @" + c + "? " + hint
				}
				fail(p.Col, "@"+p.Name, hint, "unknown set @%s", p.Name)
				continue
			}
			if p.Name == "internet" {
				if !b.AllowInternet {
					fail(p.Col, "@internet", "ask the operator, or name the peers you need", "@internet is not allowed in namespace %q (allow_internet is false)", ns)
					continue
				}
				if e.internet == nil {
					e.internet = e.op.InternetPrefixes()
				}
				prefixes = append(prefixes, e.internet...)
				continue
			}
			if len(b.Peers) > 0 && !slices.Contains(b.Peers, p.Name) && !slices.Contains(b.Peers, "@"+p.Name) {
				allowed := make([]string, len(b.Peers))
				for i, n := range b.Peers {
					allowed[i] = strings.TrimPrefix(n, "@")
				}
				fail(p.Col, "@"+p.Name, "this namespace may use "+atNames(allowed), "@%s is not allowed in namespace %q (not in its peers)", p.Name, ns)
				continue
			}
			prefixes = append(prefixes, e.op.Peers[p.Name]...)
		case PeerPrefix:
			if p.Prefix == allV6 && !b.AllowAny {
				fail(p.Col, p.String(), "name the peers: @name, service:NAME, job:NAME or a prefix", "::/0 is 'any', which is not allowed in namespace %q (allow_any is false)", ns)
				continue
			}
			if len(b.Prefixes) == 0 {
				fail(p.Col, p.String(), "ask the operator for an @name that holds it", "literal prefixes are not allowed in namespace %q (its prefixes bound is empty)", ns)
				continue
			}
			if !prefixesContain(b.Prefixes, p.Prefix) {
				fail(p.Col, p.String(), "the namespace may name prefixes inside "+formatPrefixes(b.Prefixes), "prefix %s is outside the prefixes of namespace %q", p, ns)
				continue
			}
			prefixes = append(prefixes, p.Prefix)
		case PeerService:
			switch {
			case p.Namespace == "" || p.Namespace == ns:
				rr.Services = append(rr.Services, p.Name)
			case !b.serviceNamespaceAllowed(p.Namespace):
				fail(p.Col, p.String(), fmt.Sprintf("write service:%s for the service of namespace %q, or ask the operator to add %q to service_namespaces", p.Name, ns, p.Namespace),
					"services of namespace %q are not allowed in namespace %q (not in its service_namespaces)", p.Namespace, ns)
				continue
			default:
				rr.Services = append(rr.Services, p.Namespace+"/"+p.Name)
			}
		case PeerJob:
			rr.Jobs = append(rr.Jobs, p.Name)
		}
	}
	rr.Prefixes = NormalizePrefixes(prefixes)
	slices.Sort(rr.Services)
	rr.Services = slices.Compact(rr.Services)
	slices.Sort(rr.Jobs)
	rr.Jobs = slices.Compact(rr.Jobs)
	return rr, ok
}

// MaxRulePorts is how many ports one rule may name (the firewall's
// firewall.MaxRulePorts): ports become hash-map elements, so the cost per
// packet stays constant; all ports (no ports written) is one element.
const MaxRulePorts = 1024

func portCount(rs []PortRange) int {
	n := 0
	for _, r := range rs {
		n += int(r.To) - int(r.From) + 1
	}
	return n
}

func formatPorts(rs []PortRange) string {
	s := make([]string, len(rs))
	for i, r := range rs {
		s[i] = r.String()
	}
	return strings.Join(s, ",")
}

func formatPrefixes(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}

// tier is v6reg_tier if set, else the job name before its first '-'
// ("p-es-cerebro" is tier "p"), constrained by the operator's Tiers.
func (e *evaluator) tier(v Value) string {
	tiers := e.op.Services.Tiers
	if v.Set() {
		t := strings.TrimSpace(v.Text)
		switch {
		case !validServiceName(t):
			e.add(&Error{Column: 1, Text: v.Text, Msg: fmt.Sprintf("invalid tier %q", v.Text), Hint: "a tier is lower case letters, digits and '-'"}, v)
			return ""
		case len(tiers) > 0 && !slices.Contains(tiers, t):
			e.add(&Error{Column: 1, Text: t, Msg: fmt.Sprintf("unknown tier %q", t), Hint: "the tiers are " + strings.Join(tiers, ", ")}, v)
			return ""
		}
		return t
	}
	prefix, _, ok := strings.Cut(e.ctx.Job, "-")
	if !ok || !validServiceName(prefix) || len(tiers) > 0 && !slices.Contains(tiers, prefix) {
		return ""
	}
	return prefix
}

func (e *evaluator) services(v Value, tier string, b Bounds) []ServiceSpec {
	svcs, errs := ParseServices(v.Text)
	for _, err := range errs {
		e.add(err, v)
	}
	if lim := e.op.Limits.OrDefault(); len(svcs) > lim.ContainerServices {
		// None of them is registered, not even with the critical check
		// of a refused policy: that would be the flood the limit stops.
		err := lim.ContainerServicesError(len(svcs))
		err.Column, err.Text = 1, v.Text
		e.add(err, v)
		return nil
	}
	tpls, err := e.op.Services.compile()
	if err != nil {
		e.add(&Error{Msg: "the operator's service tag templates are broken: " + err.Error(), Hint: "tell the operator; `v6reg agent` refuses such a config"}, v)
	}
	short := e.ctx.AllocID
	if len(short) > 8 {
		short = short[:8]
	}
	out := make([]ServiceSpec, 0, len(svcs))
	for _, s := range svcs {
		if strings.HasPrefix(s.Name, ReservedServicePrefix) {
			e.add(&Error{Column: s.Col, Text: s.Name, Msg: fmt.Sprintf("service names starting with %q are v6reg's own", ReservedServicePrefix),
				Hint: "choose another name"}, v)
			continue
		}
		if !b.serviceAllowed(s.Name) {
			e.add(&Error{Column: s.Col, Text: s.Name, Msg: fmt.Sprintf("service %s is not allowed in namespace %q (not in its services: %s)", s.Name, e.ctx.Namespace, strings.Join(b.Services, ", ")),
				Hint: "choose a name the namespace may register, or ask the operator to widen its services"}, v)
			continue
		}
		name := s.Name
		if tier != "" {
			name = tier + "-" + s.Name
		}
		data := TagData{Namespace: e.ctx.Namespace, Job: e.ctx.Job, Group: e.ctx.Group, Task: e.ctx.Task,
			AllocID: e.ctx.AllocID, ShortAllocID: short, Service: s.Name, Port: int(s.Port), Check: s.Check.String(),
			Tier: tier, Domain: e.op.Services.Domain, Name: name}
		spec := ServiceSpec{Name: s.Name, Port: s.Port, Check: s.Check, Path: s.CheckPath()}
		if tags, err := renderTags(tpls, data); err != nil {
			hint := "tell the operator: the tag templates fail for this service"
			if errors.Is(err, errUnsafeTagData) {
				hint = "rename it with letters, digits, '.', '_' and '-' only"
			}
			e.add(&Error{Column: s.Col, Text: s.Name, Msg: "rendering tags: " + err.Error(), Hint: hint}, v)
		} else {
			spec.Tags = tags
		}
		out = append(out, spec)
	}
	return out
}

var errUnsafeTagData = errors.New("a name the job chose cannot go into a tag")

// unsafeTagData refuses to render t with data when t uses a name the
// job's author chose freely (Nomad allows nearly any character in job,
// group and task names) and that name holds a character outside letters,
// digits, '.', '_' and '-': a backquote or a parenthesis would let the job
// rewrite the Traefik rule the operator's template builds
// (Host(`{{.Job}}...`)), an '=' or ',' the tag's key or list. Whether t
// uses the name is told by rendering it again with a plain name in its
// place, so that no way of reaching the field ({{.Job}}, {{.}}, printf)
// escapes the check. The other fields are checked where they come from
// (namespace, service, tier) or made by v6reg. got is t rendered with
// data.
func unsafeTagData(t *template.Template, data TagData, got string) error {
	plain := data
	var unsafe []string
	for _, f := range []struct {
		what  string
		value *string
	}{{"job", &plain.Job}, {"group", &plain.Group}, {"task", &plain.Task}} {
		if i := strings.IndexFunc(*f.value, func(r rune) bool {
			return (r < 'a' || r > 'z') && (r < 'A' || r > 'Z') && (r < '0' || r > '9') && r != '.' && r != '_' && r != '-'
		}); i >= 0 {
			unsafe = append(unsafe, fmt.Sprintf("the %s name %q holds %q", f.what, *f.value, []rune((*f.value)[i:])[0]))
			*f.value = "v6reg-plain-" + f.what
		}
	}
	if len(unsafe) == 0 {
		return nil
	}
	var b strings.Builder
	if err := t.Execute(&b, plain); err != nil || b.String() != got {
		return fmt.Errorf("%w: tag template %s uses it, and %s (only letters, digits, '.', '_' and '-' are safe in a tag or a Traefik rule)",
			errUnsafeTagData, t.Name(), strings.Join(unsafe, ", "))
	}
	return nil
}

func renderTags(tpls []*template.Template, data TagData) ([]string, error) {
	var tags []string
	var b strings.Builder
	for _, t := range tpls {
		b.Reset()
		if err := t.Execute(&b, data); err != nil {
			return nil, fmt.Errorf("tag template %s: %w", t.Name(), err)
		}
		if err := unsafeTagData(t, data, b.String()); err != nil {
			return nil, err
		}
		if tag := strings.TrimSpace(b.String()); tag != "" && !slices.Contains(tags, tag) {
			tags = append(tags, tag)
		}
	}
	return tags, nil
}
