// Package desired computes the node's desired state: what the firewall and
// Consul should hold for every container on the v6reg network, from the
// containers (Docker), their allocations (Nomad), the operator's
// configuration and the addresses of Consul-backed peers. It does no I/O:
// Build is a pure function of its Input, so building twice with the same
// input gives the same state, and tests need no fakes.
package desired

import (
	"github.com/v6reg/v6reg/internal/text"
	"github.com/v6reg/v6reg/peers"

	"github.com/v6reg/v6reg/registrar"

	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/v6reg/v6reg/docker"

	"github.com/v6reg/v6reg/nomad"

	"github.com/v6reg/v6reg/firewall"
	"github.com/v6reg/v6reg/policies"
)

// Workload is one container as the agent understands it: where its policy
// came from, what it evaluated to, and what each output should hold for it.
type Workload struct {
	Container docker.Container
	// Source is "nomad" or "labels".
	Source                      string
	Namespace, Job, Group, Task string
	Stopping                    bool
	Policy                      policies.Policy
	// Closed is set when the container gets no opening at all; Reason says
	// why (policy errors, unknown allocation, no address).
	Closed bool
	Reason string
	Errors []string
	// IngressSource and EgressSource say which meta key or label at which
	// level the policy came from (for explain).
	IngressSource, EgressSource string
}

// Desired is the whole node's desired state, rebuilt on every reconcile.
type Desired struct {
	Workloads     []Workload
	Firewall      firewall.State
	Registrations map[string]registrar.Registration
	// PeerKeys are the Consul-backed peers some local policy uses.
	PeerKeys map[peers.Key]bool

	// RegHashes are the Registrations' hashes (computed once per
	// evaluation, not per reconcile); Digests identify each container's
	// rules, for the log; PeerUsers index the containers by the peers
	// they name.
	RegHashes map[string]string
	Digests   map[string]string
	PeerUsers map[peers.Key][]string
}

// Input is everything the builder reads; it does no I/O.
type Input struct {
	Node       string
	IDPrefix   string
	Prefix     netip.Prefix
	Gateway    netip.Addr
	Bridge     string // the network's bridge: the firewall filters all it carries
	NodePorts  []firewall.Rule
	Operator   policies.Operator
	Containers []docker.Container
	// Nomad says whether Nomad is enabled, and looks allocations up.
	Nomad  bool
	Lookup func(allocID string) (nomad.Alloc, bool)
	// Holders are, by MAC, IPv6 and IPv4 address (their string forms),
	// the containers that had it in the last desired state
	// (Desired.Holders): the one in force keeps it (Docker lists creation
	// times in whole seconds, too coarse to tell two starts apart).
	Holders map[string]string
	// Peers returns the addresses of a Consul-backed peer and whether
	// Consul has answered for it yet.
	Peers func(peers.Key) ([]netip.Prefix, bool)
	// Memo, if not nil, keeps each container's evaluation across builds
	// (see Memo); OperatorRev names the version of Operator in it.
	Memo        *Memo
	OperatorRev uint64
	// Elements, if not nil, counts firewall elements for the size limits
	// across passes (see EnforceLimits).
	Elements *firewall.ElementCounter
}

// evaluated is what one container's policy gives, on its own: everything
// the desired state holds for it except what depends on the other
// containers (a shared address or MAC closes it) and the addresses of its
// Consul-backed peers (looked up at every build, by key).
type evaluated struct {
	w               Workload
	ingress, egress []firewall.Rule
	// prefixSets are the literal prefix lists its rules name.
	prefixSets map[string][]netip.Prefix
	peerKeys   []peers.Key
	regs       []registrar.Registration
	regHashes  []string
	// digest identifies its rules, for the log of what changed.
	digest string
}

// evaluate computes one container's evaluation. Pure, like build.
func evaluate(c docker.Container, in Input) *evaluated {
	w := workloadFor(c, in)
	e := &evaluated{w: w}
	if !w.Closed {
		sets := map[string][]netip.Prefix{}
		keys := map[peers.Key]bool{}
		e.ingress = firewallRules(w.Policy.Ingress, w.Namespace, sets, keys)
		e.egress = firewallRules(w.Policy.Egress, w.Namespace, sets, keys)
		if len(sets) > 0 {
			e.prefixSets = sets
		}
		for k := range keys {
			e.peerKeys = append(e.peerKeys, k)
		}
		sort.Slice(e.peerKeys, func(i, j int) bool { return e.peerKeys[i].String() < e.peerKeys[j].String() })
	}
	e.regs = registrationsFor(w, in)
	e.regHashes = make([]string, len(e.regs))
	for i, r := range e.regs {
		e.regHashes[i] = r.Hash()
	}
	e.digest = fmt.Sprintf("%v %v", e.ingress, e.egress)
	return e
}

// Memo keeps the last evaluation of every container, keyed by the
// versions of what it was computed from: the container as Docker gave it
// (Container.rev), its allocation as Nomad gave it (Alloc.rev) and the
// operator configuration. A build evaluates again only the containers one
// of those changed for; the others cost a map lookup. Only the reconcile
// loop uses it.
type Memo struct {
	m map[string]memoEntry
	// evals counts evaluations (not memo hits), for tests and benchmarks.
	evals int
}

type memoEntry struct {
	crev, arev, oprev uint64
	alloc             bool // the allocation was known
	e                 *evaluated
}

// NewMemo is an empty memo.
func NewMemo() *Memo { return &Memo{m: map[string]memoEntry{}} }

// Evaluations counts the evaluations the memo did not spare (tests,
// benchmarks).
func (m *Memo) Evaluations() int { return m.evals }

// get returns c's evaluation, from the memo when nothing it depends on
// changed. Without versions (rev 0: tests' inputs) it always evaluates.
func (m *Memo) get(c docker.Container, in Input) *evaluated {
	if m == nil || c.Rev == 0 || in.OperatorRev == 0 {
		return evaluate(c, in)
	}
	k := memoEntry{crev: c.Rev, oprev: in.OperatorRev}
	if c.AllocID != "" && in.Nomad {
		if a, ok := in.Lookup(c.AllocID); ok {
			k.alloc, k.arev = true, a.Rev
		}
	}
	if old, ok := m.m[c.ID]; ok && old.crev == k.crev && old.oprev == k.oprev && old.alloc == k.alloc && old.arev == k.arev && (!k.alloc || k.arev != 0) {
		return old.e
	}
	m.evals++
	k.e = evaluate(c, in)
	m.m[c.ID] = k
	return k.e
}

// Forget drops the containers not in keep.
func (m *Memo) Forget(keep map[string]bool) {
	if m == nil {
		return
	}
	for id := range m.m {
		if !keep[id] {
			delete(m.m, id)
		}
	}
}

// Build computes the desired state. It is a pure function of its input, so
// reconciling twice with the same input changes nothing.
func Build(in Input) Desired {
	d := Desired{
		Firewall: firewall.State{
			Prefix:    in.Prefix,
			Gateway:   in.Gateway,
			Bridge:    in.Bridge,
			NodePorts: in.NodePorts,
			PeerSets:  map[string][]netip.Prefix{},
		},
		Registrations: make(map[string]registrar.Registration, 2*len(in.Containers)),
		PeerKeys:      map[peers.Key]bool{},
		RegHashes:     make(map[string]string, 2*len(in.Containers)),
		Digests:       make(map[string]string, len(in.Containers)),
		PeerUsers:     map[peers.Key][]string{},
		Workloads:     make([]Workload, 0, len(in.Containers)),
	}
	d.Firewall.Containers = make([]firewall.Container, 0, len(in.Containers))
	// One MAC or address on two containers (a task may ask Docker for
	// any MAC and address, another's included, and Docker lets the IPAM
	// driver decide): the one in force, else the oldest, keeps it.
	macOwner := owners(in.Containers, in.Holders, func(c docker.Container) string {
		if len(c.MAC) == 0 {
			return ""
		}
		return c.MAC.String()
	})
	addrOwner := owners(in.Containers, in.Holders, func(c docker.Container) string {
		if !c.Addr.IsValid() {
			return ""
		}
		return c.Addr.String()
	})
	addr4Owner := owners(in.Containers, in.Holders, func(c docker.Container) string {
		if !c.Addr4.Is4() || c.Addr4.IsUnspecified() {
			return ""
		}
		return c.Addr4.String()
	})
	// ports are the bridge ports of the containers programmed with their
	// address: a port is one container's (see closePorts).
	ports := make(map[int]string, len(in.Containers))
	var unbound []int // indexes into d.Workloads of the containers closed here
	for _, c := range in.Containers {
		e := in.Memo.get(c, in)
		w := e.w
		w.Container = c // the bridge port is not part of the evaluation
		reason := addrProblem(c, in.Prefix, in.Gateway)
		if o := addrOwner[c.Addr.String()]; reason == "" && o.ID != c.ID {
			// Never program one address for two containers.
			reason = fmt.Sprintf("address %s is also container %s's (created earlier); request another address or none", c.Addr, o.ShortID())
		}
		if o, ok := macOwner[c.MAC.String()]; reason == "" && len(c.MAC) > 0 && ok && o.ID != c.ID {
			// One MAC on two bridge ports: neighbour discovery and the
			// bridge's forwarding table would send the older one's
			// traffic to the newer. The older keeps working.
			reason = fmt.Sprintf("MAC %s is also container %s's (created earlier); give this container another MAC address", c.MAC, o.ShortID())
		}
		if reason == "" && c.Port > 0 && ports[c.Port] != "" {
			// Two containers behind one bridge port (one network
			// namespace): the port is bound to the first one's address
			// and MAC, which the second cannot have.
			reason = fmt.Sprintf("bridge port %d is also container %s's", c.Port, ports[c.Port])
		}
		if reason != "" {
			// No address, binding or registration without a usable,
			// unique address: its bridge port is closed instead (after
			// the loop), and the workload still shows in status.
			w.Closed, w.Reason = true, reason
			unbound = append(unbound, len(d.Workloads))
			d.Workloads = append(d.Workloads, w)
			continue
		}
		if c.Port > 0 {
			ports[c.Port] = c.ShortID()
		}
		fc := firewall.Container{ID: c.ID, Addr: c.Addr, MAC: c.MAC, Port: c.Port}
		if o, ok := addr4Owner[c.Addr4.String()]; ok && o.ID == c.ID {
			fc.Addr4 = c.Addr4
		}
		if !w.Closed {
			fc.Ingress, fc.Egress = e.ingress, e.egress
			for name, ps := range e.prefixSets {
				d.Firewall.PeerSets[name] = ps
			}
			for _, k := range e.peerKeys {
				d.PeerUsers[k] = append(d.PeerUsers[k], c.ID)
				if !d.PeerKeys[k] {
					d.PeerKeys[k] = true
					addrs, _ := in.Peers(k) // until Consul answers, the set is empty: closed
					d.Firewall.PeerSets[k.String()] = addrs
				}
			}
			d.Digests[c.ID] = e.digest
		}
		d.Firewall.Containers = append(d.Firewall.Containers, fc)
		for i, r := range e.regs {
			d.Registrations[r.ID] = r
			d.RegHashes[r.ID] = e.regHashes[i]
		}
		d.Workloads = append(d.Workloads, w)
	}
	closePorts(&d, unbound, ports)
	return d
}

// closePorts closes the bridge port of each container that Build could
// not program with its address (d.Workloads[i] for i in unbound): left
// out of the firewall state, the port would be in none of the bridge
// table's sets, and a container with NET_RAW could send anything through
// it, another container's MAC or router advertisements included. A
// closed container is a firewall.Container with only its ID and Port, so
// the element's owner is the container, and when the conflict ends the
// same ID comes back with its address and its port is bound instead.
// A port that a programmed container has (ports) is never closed: it is
// that container's, and bound to its MAC, which already stops the other
// one. A port that is not known (0) cannot be closed; the reason says so.
func closePorts(d *Desired, unbound []int, ports map[int]string) {
	for _, i := range unbound {
		w := &d.Workloads[i]
		c := w.Container
		switch {
		case c.Port <= 0:
			w.Reason += "; its bridge port is not known, so it is not closed"
		case ports[c.Port] != "":
			// Bound to the other container's MAC: the reason names it.
		default:
			ports[c.Port] = c.ShortID()
			w.Reason += "; its bridge port drops everything it sends"
			d.Firewall.Containers = append(d.Firewall.Containers, firewall.Container{ID: c.ID, Port: c.Port, Closed: true})
		}
	}
}

// owners maps each key (a MAC or an address, by key; "" for none) on the
// network to the container that has it first, so that a container
// started later with another's cannot take its place: the one that held
// it in the last desired state (holders), else the oldest, by creation
// then ID.
func owners(cs []docker.Container, holders map[string]string, key func(docker.Container) string) map[string]docker.Container {
	owner := make(map[string]docker.Container, len(cs))
	for _, c := range cs {
		k := key(c)
		if k == "" {
			continue
		}
		o, ok := owner[k]
		switch {
		case !ok:
			owner[k] = c
		case holders[k] == o.ID:
		case holders[k] == c.ID || c.Created.Before(o.Created) || c.Created.Equal(o.Created) && c.ID < o.ID:
			owner[k] = c
		}
	}
	return owner
}

// Holders lists, by MAC, IPv6 and IPv4 address, the containers that the
// desired state programs (for the next build's Holders).
func (d Desired) Holders() map[string]string {
	out := make(map[string]string, 3*len(d.Firewall.Containers))
	for _, c := range d.Firewall.Containers {
		if c.Closed {
			continue // holds only its port: no address or MAC of its own
		}
		out[c.Addr.String()] = c.ID
		if len(c.MAC) > 0 {
			out[c.MAC.String()] = c.ID
		}
		if c.Addr4.IsValid() {
			out[c.Addr4.String()] = c.ID
		}
	}
	return out
}

func addrProblem(c docker.Container, prefix netip.Prefix, gateway netip.Addr) string {
	switch {
	case !c.Addr.IsValid():
		return "no IPv6 address on the v6reg network"
	case !prefix.Contains(c.Addr):
		return fmt.Sprintf("address %s is outside the node prefix %s", c.Addr, prefix)
	case c.Addr == gateway:
		return fmt.Sprintf("address %s is the network's gateway", c.Addr)
	}
	return ""
}

// MaxErrorLen bounds one policy error as the agent keeps and shows it (a
// message may quote a token of a 64 KiB value); its location comes first,
// so a cut one still says where it is.
const MaxErrorLen = 512

// reNamespace is Nomad's rule for namespace names.
var reNamespace = regexp.MustCompile(`^[a-zA-Z0-9-]{1,128}$`)

// identityLabelErrors checks the labels that give a container without
// Nomad its namespace and job: the namespace must be a name Nomad could
// have, the job an ID Nomad could have (no spaces or control characters,
// at most 256 bytes of UTF-8).
func identityLabelErrors(labels map[string]string) []string {
	var errs []string
	if ns, ok := labels[docker.LabelNamespace]; ok && !reNamespace.MatchString(ns) {
		errs = append(errs, fmt.Sprintf("label %q: %s is not a namespace name; use letters, digits and '-', at most 128 characters", docker.LabelNamespace, quoteCut(ns)))
	}
	if job, ok := labels[docker.LabelJob]; ok {
		bad := job == "" || len(job) > 256 || !utf8.ValidString(job) ||
			strings.ContainsFunc(job, func(r rune) bool { return unicode.IsSpace(r) || !unicode.IsPrint(r) })
		if bad {
			errs = append(errs, fmt.Sprintf("label %q: %s is not a job ID; use at most 256 printable characters without spaces", docker.LabelJob, quoteCut(job)))
		}
	}
	return errs
}

// quoteCut quotes s, cut to 64 bytes: enough to recognise a value.
func quoteCut(s string) string {
	if len(s) <= 64 {
		return strconv.Quote(s)
	}
	return strconv.Quote(text.Cut(s, 64)) + fmt.Sprintf(" (%d bytes)", len(s))
}

// workloadFor finds the container's policy: from its Nomad allocation, or
// from its v6reg.* labels when it has none.
func workloadFor(c docker.Container, in Input) Workload {
	w := Workload{Container: c}
	var meta policies.Meta
	if c.AllocID != "" {
		w.Source = "nomad"
		if !in.Nomad {
			w.Closed, w.Reason = true, "started by Nomad (label "+docker.LabelNomadAlloc+"), but nomad is disabled in the agent config"
			return w
		}
		a, ok := in.Lookup(c.AllocID)
		if !ok {
			w.Closed, w.Reason = true, "policy unknown: Nomad has not (yet) listed allocation "+c.AllocID+" for this node"
			return w
		}
		w.Namespace, w.Job, w.Group, w.Task, w.Stopping = a.Namespace, a.Job, a.Group, c.Task, a.Stopping
		tm, ok := a.TaskMeta[c.Task]
		if !ok {
			w.Closed, w.Reason = true, fmt.Sprintf("task %q is not in group %q of job %q", c.Task, a.Group, a.Job)
			return w
		}
		meta = policies.FromNomad(a.JobMeta, a.GroupMeta, tm)
	} else {
		w.Source = "labels"
		w.Namespace = in.Operator.LabelsNamespace
		if w.Namespace == "" {
			w.Namespace = "default"
		}
		w.Job = c.Labels[docker.LabelJob]
		w.Task = c.Name
		errs := identityLabelErrors(c.Labels)
		if ns, ok := c.Labels[docker.LabelNamespace]; ok && len(errs) == 0 {
			switch {
			case in.Operator.LabelsChooseNamespace:
				w.Namespace = ns
			case ns != w.Namespace:
				errs = append(errs, fmt.Sprintf("label %q: containers started without Nomad belong to namespace %q (docker.labels_namespace), not %s; remove the label, or ask the operator to set docker.labels_choose_namespace", docker.LabelNamespace, w.Namespace, quoteCut(ns)))
			}
		}
		if len(errs) > 0 {
			// They pick the bounds and name the job in Consul tags and
			// job: peers: a garbled one is refused, not guessed at.
			w.Namespace, w.Job = "", ""
			w.Errors = errs
			w.Closed, w.Reason = true, fmt.Sprintf("policy refused (%d error(s)); the container stays closed until the job is fixed", len(errs))
			return w
		}
		meta = policies.FromLabels(c.Labels)
	}
	if w.Namespace == "" {
		w.Namespace = "default"
	}
	w.IngressSource, w.EgressSource = metaSource(meta.Ingress, &w), metaSource(meta.Egress, &w)
	pol, errs := policies.Evaluate(meta, policies.Context{
		Namespace: w.Namespace, Job: w.Job, Group: w.Group, Task: w.Task, AllocID: c.AllocID,
	}, in.Operator)
	w.Policy = pol
	for _, e := range errs {
		w.Errors = append(w.Errors, text.Cut(e.Error(), MaxErrorLen))
	}
	if len(errs) > 0 {
		w.Closed = true
		w.Reason = fmt.Sprintf("policy refused (%d error(s)); the container stays closed until the job is fixed", len(errs))
	}
	return w
}

// firewallRules turns resolved rules into firewall rules, registering the
// peer sets they use: literal prefix lists under a name derived from their
// content (so identical lists are shared), and Consul-backed peers under
// their key, filled from the watches.
func firewallRules(rules []policies.ResolvedRule, namespace string, sets map[string][]netip.Prefix, keys map[peers.Key]bool) []firewall.Rule {
	var out []firewall.Rule
	for _, r := range rules {
		proto, ports := fwProto(r)
		var names []string
		// Both families: IPv6 prefixes open the /80 address, IPv4
		// prefixes (operator sets, @internet) the container's IPv4 egress
		// through the node's NAT; the firewall has no IPv4 ingress.
		var prefixes []netip.Prefix
		anyPeer := false
		for _, p := range r.Prefixes {
			if p.Addr().Is4In6() {
				continue
			}
			if p.Bits() == 0 && p.Addr().Is6() {
				anyPeer = true
			}
			prefixes = append(prefixes, p)
		}
		if anyPeer {
			names = append(names, firewall.PeerAny)
		} else if len(prefixes) > 0 {
			name := prefixSetName(prefixes)
			sets[name] = prefixes
			names = append(names, name)
		}
		for _, s := range r.Services {
			k := peers.ServiceKey(namespace, s)
			keys[k] = true
			names = append(names, k.String())
		}
		for _, j := range r.Jobs {
			k := peers.JobKey(namespace, j)
			keys[k] = true
			names = append(names, k.String())
		}
		for _, p := range names {
			out = append(out, firewall.Rule{Peer: p, Proto: proto, Ports: ports})
		}
	}
	return out
}

func fwProto(r policies.ResolvedRule) (firewall.Proto, []firewall.PortRange) {
	var p firewall.Proto
	switch r.Proto {
	case policies.TCP:
		p = firewall.TCP
	case policies.UDP:
		p = firewall.UDP
	case policies.ICMP:
		return firewall.ICMP, nil
	default:
		return firewall.Any, nil
	}
	var ports []firewall.PortRange
	for _, pr := range r.Ports {
		if pr == policies.AllPorts {
			return p, nil
		}
		ports = append(ports, firewall.PortRange{First: pr.From, Last: pr.To})
	}
	return p, ports
}

func prefixSetName(ps []netip.Prefix) string {
	strs := make([]string, len(ps))
	for i, p := range ps {
		strs[i] = p.String()
	}
	sort.Strings(strs)
	sum := sha256.Sum256([]byte(strings.Join(strs, ",")))
	return "pfx:" + hex.EncodeToString(sum[:6])
}

func shortAlloc(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}

// registrationsFor makes the Consul services of one workload: one per
// v6reg_services entry (none while its allocation is stopping, so Traefik
// stops routing before the container is killed), one in v6reg-jobs for
// job:NAME peers, and a critical check carrying the error when its policy
// is refused.
func registrationsFor(w Workload, in Input) []registrar.Registration {
	c := w.Container
	if w.Stopping || !c.Addr.IsValid() {
		return nil
	}
	meta := map[string]string{registrar.MetaContainer: c.ShortID(), registrar.MetaNamespace: w.Namespace, registrar.MetaPrefix: in.Prefix.String()}
	if c.AllocID != "" {
		meta[registrar.MetaAlloc] = c.AllocID
	}
	if w.Job != "" {
		meta[registrar.MetaJob] = w.Job
	}
	if w.Task != "" {
		meta[registrar.MetaTask] = w.Task
	}
	var tags []string
	if c.AllocID != "" {
		tags = append(tags, shortAlloc(c.AllocID))
	}
	var out []registrar.Registration
	if len(w.Errors) > 0 {
		notes := "v6reg refused this container's policy; it stays closed until fixed:\n" + strings.Join(w.Errors, "\n")
		crit := registrar.Check{Kind: "critical", Notes: notes}
		if len(w.Policy.Services) == 0 {
			out = append(out, registrar.Registration{
				ID: registrar.ServiceID(in.IDPrefix, in.Node, c.ID, "policy", 0), Name: registrar.PolicyErrorService,
				Addr: c.Addr, Tags: errorTags(tags, w), Meta: meta, Check: crit,
			})
		}
		for _, s := range w.Policy.Services {
			out = append(out, registrar.Registration{
				ID: registrar.ServiceID(in.IDPrefix, in.Node, c.ID, s.Name, int(s.Port)), Name: s.Name,
				Addr: c.Addr, Port: int(s.Port), Tags: tags, Meta: meta, Check: crit,
			})
		}
		return out
	}
	if w.Closed {
		return nil
	}
	for _, s := range w.Policy.Services {
		out = append(out, registrar.Registration{
			ID: registrar.ServiceID(in.IDPrefix, in.Node, c.ID, s.Name, int(s.Port)), Name: s.Name,
			Addr: c.Addr, Port: int(s.Port), Tags: append(append([]string{}, tags...), s.Tags...), Meta: meta,
			Check: registrar.Check{Kind: s.Check.String(), Path: s.Path},
		})
	}
	if w.Job != "" {
		out = append(out, registrar.Registration{
			ID: registrar.ServiceID(in.IDPrefix, in.Node, c.ID, "job", 0), Name: registrar.JobsService,
			Addr: c.Addr, Tags: []string{registrar.JobTag(w.Namespace, w.Job)}, Meta: meta,
		})
	}
	return out
}

// errorTags tags a policy-error registration with its job, when it has one,
// so the Consul UI can be filtered by job.
func errorTags(tags []string, w Workload) []string {
	out := append([]string{}, tags...)
	if w.Job != "" {
		out = append(out, registrar.JobTag(w.Namespace, w.Job))
	}
	return out
}

// metaSource says where a policy value was written, for explain.
func metaSource(v policies.Value, w *Workload) string {
	if !v.Set() {
		return ""
	}
	switch v.Level {
	case policies.LevelLabel:
		return fmt.Sprintf("label %q", v.Key)
	case policies.LevelJob:
		return fmt.Sprintf("job %q meta %q", w.Job, v.Key)
	case policies.LevelGroup:
		return fmt.Sprintf("job %q group %q meta %q", w.Job, w.Group, v.Key)
	default:
		return fmt.Sprintf("job %q group %q task %q meta %q", w.Job, w.Group, w.Task, v.Key)
	}
}
