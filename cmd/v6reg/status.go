package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/v6reg/v6reg/api"

	"github.com/v6reg/v6reg/agent/config"
	"github.com/v6reg/v6reg/ipam"
	"github.com/v6reg/v6reg/policies"
)

func init() {
	loadOperatorConfig = config.LoadPolicy
}

func operatorFromConfig(cfg config.Config) (policies.Operator, error) {
	if err := cfg.Policy.Validate(); err != nil {
		return cfg.Policy, fmt.Errorf("policy configuration: %w", err)
	}
	return cfg.Policy, nil
}

// socketFlag adds -socket with the configured (or default) API socket.
func socketFlag(fs *flag.FlagSet) *string {
	def := config.Default().APISocket
	if _, err := os.Stat(def); err != nil {
		if dev := config.DevStateDir() + "/v6reg.sock"; fileExists(dev) {
			def = dev
		}
	}
	return fs.String("socket", def, "the agent's API unix `socket`")
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func apiGet(socket, path string, out any) error {
	resp, err := apiClient(socket).Get("http://v6reg" + path)
	if err != nil {
		return fmt.Errorf("asking the agent on %s: %w (is `v6reg agent` running, and are you root?)", socket, err)
	}
	defer func() { _ = resp.Body.Close() }() // fully read below; nothing to lose
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("reading the agent's answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return errors.New(strings.TrimSpace(string(body)))
	}
	return json.Unmarshal(body, out)
}

const statusUsage = `Usage: v6reg status [-format table|json] [-socket PATH]

Shows every container the agent manages on this node: job/task, allocation,
address, rule counts, Consul services with their live health (Consul's check
output for any that is not passing), drops, and why a container is closed.

Flags:
`

func runStatus(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, statusUsage); fs.PrintDefaults() }
	format := fs.String("format", "table", "output `format`: table or json")
	socket := socketFlag(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	var s api.Snapshot
	if err := apiGet(*socket, "/v1/status", &s); err != nil {
		fmt.Fprintf(stderr, "v6reg status: %v\n", err)
		return 1
	}
	switch *format {
	case "json":
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(s)
	case "table":
		printStatus(stdout, &s)
	default:
		fmt.Fprintf(stderr, "v6reg status: -format %q: use table or json\n", *format)
		return 2
	}
	return 0
}

// printStatus writes the status table. It fits 80 columns for a /80: the
// address column shows the host part (the prefix is in the header), rule
// and drop counts are in/out pairs, the CONSUL column ends with the worst
// live health of the container's services (details and Consul's output
// below the table), and long names are cut with a '~'.
func printStatus(w io.Writer, s *api.Snapshot) {
	// Errors may quote what containers control: escape like their fields.
	esc := *s
	for _, p := range []*string{&esc.Node, &esc.Prefix, &esc.Nomad, &esc.FirewallErr, &esc.BridgeNetfilterErr, &esc.ConsulErr, &esc.StateErr, &esc.HealthErr} {
		*p = escapeText(*p)
	}
	s = &esc
	fmt.Fprintf(w, "node %s  prefix %s  nomad %s  reconciled %s ago\n", s.Node, s.Prefix, s.Nomad, time.Since(s.At).Round(time.Second))
	if s.FirewallErr != "" {
		fmt.Fprintf(w, "FIREWALL ERROR: %s\n", s.FirewallErr)
	}
	if s.BridgeNetfilterErr != "" {
		fmt.Fprintf(w, "UNHEALTHY: %s\n", s.BridgeNetfilterErr)
	}
	if s.ConsulErr != "" {
		fmt.Fprintf(w, "CONSUL ERROR: %s\n", s.ConsulErr)
	}
	if s.StateErr != "" {
		fmt.Fprintf(w, "STATE ERROR: %s\n", s.StateErr)
	}
	if s.HealthErr != "" {
		fmt.Fprintf(w, "Consul did not answer: %s; health unknown\n", s.HealthErr)
	}
	// Kernel counters since the tables were created: any is a container
	// trying to be another (v6reg_spoofed_packets has them over time).
	if sp := s.Spoofed; sp != nil && sp.BridgePortPackets+sp.SourcePackets > 0 {
		fmt.Fprintf(w, "SPOOFING: %d frames dropped at bridge ports, %d packets with forged sources\n",
			sp.BridgePortPackets, sp.SourcePackets)
	}
	prefix, _ := netip.ParsePrefix(s.Prefix)
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', 0)
	fmt.Fprintln(tw, "JOB/TASK\tALLOC\tADDRESS\tRULES\tCONSUL\tDROPS\tSTATE")
	var notes []string
	for _, c := range s.Containers {
		c = escapeContainer(c)
		name := displayName(c)
		alloc := "-"
		if c.AllocID != "" {
			alloc = c.AllocID[:min(8, len(c.AllocID))]
		}
		drops := "-"
		if c.Drops != nil {
			drops = fmt.Sprintf("%d/%d", c.Drops.IngressPackets, c.Drops.EgressPackets)
		}
		state := "open"
		switch {
		case len(c.Errors) > 0:
			state = "ERROR"
		case c.Closed:
			state = "closed"
		case c.Stopping:
			state = "stopping"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d/%d\t%s\t%s\t%s\n", trunc(name, 16), alloc, hostPart(prefix, c.Address), len(c.Ingress), len(c.Egress), consulCell(c.Services, 14), drops, state)
		if c.Reason != "" {
			notes = append(notes, fmt.Sprintf("%s: %s", name, c.Reason))
		}
		for _, e := range c.Errors {
			notes = append(notes, "  "+e)
		}
		notes = append(notes, healthNotes(name, c, 80)...)
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "%d containers (ADDRESS: host part in the prefix; RULES, DROPS: in/out)\n", len(s.Containers))
	fmt.Fprintln(w, "CONSUL: services, then the worst check: ok, warn, CRIT, ? (unknown)")
	for _, l := range peerCutLines(s, 80) {
		fmt.Fprintln(w, l)
	}
	for _, n := range notes {
		fmt.Fprintln(w, n)
	}
}

// displayName is how the table names a container: job/task, or the one
// of them it has. The fields are escaped already.
func displayName(c api.ContainerState) string {
	switch {
	case c.Job != "" && c.Job != c.Task:
		return c.Job + "/" + c.Task
	case c.Job != "":
		return c.Job
	}
	return c.Task
}

// peerCutLines says which service:/job: peer sets Consul has more
// registrations of than limits.peer_set_addresses: the firewall keeps
// the first registered and denies the others, so a container that uses
// the peer does not reach (or is not reached by) all of them. Each set
// names the containers that use it, wrapped to width.
func peerCutLines(s *api.Snapshot, width int) []string {
	if len(s.PeerSetsCut) == 0 {
		return nil
	}
	names := make(map[string]string, len(s.Containers))
	for _, c := range s.Containers {
		names[c.ID] = displayName(escapeContainer(c))
	}
	out := []string{"PEER SETS CUT to limits.peer_set_addresses (the first registered are kept):"}
	for _, pc := range s.PeerSetsCut {
		out = append(out, trunc(fmt.Sprintf("  %s: %d in Consul, %d kept (limit %d)", escapeText(pc.Peer), pc.Registrations, pc.Kept, pc.Limit), width))
		var users []string
		for _, id := range pc.Containers {
			n, ok := names[id]
			if !ok {
				n = escapeText(id[:min(12, len(id))])
			}
			users = append(users, n)
		}
		if len(users) > 0 {
			out = append(out, wrap("used by "+strings.Join(users, ", "), "    ", width, 3)...)
		}
	}
	return out
}

// internalService says whether a registration is v6reg's own (job peers,
// policy errors) rather than one the job declared.
func internalService(name string) bool {
	return name == "v6reg-jobs" || name == "v6reg-policy-errors"
}

// healthRank orders Consul health from best to worst; "" (no check) first.
func healthRank(h string) int {
	switch h {
	case "":
		return 0
	case "passing":
		return 1
	case "warning":
		return 2
	case "critical":
		return 4
	default: // unknown
		return 3
	}
}

// healthMark is the short form of a health in the CONSUL column.
func healthMark(h string) string {
	switch h {
	case "":
		return ""
	case "passing":
		return "ok"
	case "warning":
		return "warn"
	case "critical":
		return "CRIT"
	default:
		return "?"
	}
}

// consulCell is the CONSUL column: the declared services as name:port,
// cut to leave room for the worst health of all of the container's
// registrations (a refused policy's check included), within width.
func consulCell(services []api.ServiceState, width int) string {
	var names []string
	worst := ""
	for _, sv := range services {
		if healthRank(sv.Health) > healthRank(worst) {
			worst = sv.Health
		}
		if !internalService(sv.Name) {
			names = append(names, sv.Name+":"+strconv.Itoa(sv.Port))
		}
	}
	mark := healthMark(worst)
	switch {
	case len(names) == 0 && mark == "":
		return "-"
	case len(names) == 0:
		return mark
	case mark == "":
		return trunc(strings.Join(names, ","), width)
	}
	return trunc(strings.Join(names, ","), width-len(mark)-1) + " " + mark
}

// healthNotes says, under the table, which of a container's registrations
// Consul does not count as passing, and why, in Consul's words, wrapped
// to width. A refused policy's check carries the error already listed; an
// unknown health without output is explained by the line on top.
func healthNotes(name string, c api.ContainerState, width int) []string {
	var out []string
	for _, sv := range c.Services {
		if sv.Health == "" || sv.Health == "passing" || sv.Health == api.HealthUnknown && sv.Output == "" {
			continue
		}
		what := sv.Name
		if !internalService(sv.Name) {
			what += ":" + strconv.Itoa(sv.Port)
		}
		head := fmt.Sprintf("%s: consul %s %s", name, what, sv.Health)
		switch {
		case sv.Check == "critical" && len(c.Errors) > 0:
			out = append(out, trunc(head+": the policy error above", width))
		case sv.Output == "":
			out = append(out, trunc(head, width))
		default:
			out = append(out, trunc(head+":", width))
			out = append(out, wrap(strings.Join(strings.Fields(sv.Output), " "), "    ", width, 3)...)
		}
	}
	return out
}

// wrap cuts s into at most maxLines lines of width columns, each with
// indent, breaking at spaces where it can; what does not fit ends in '~'.
func wrap(s, indent string, width, maxLines int) []string {
	room := width - len(indent)
	var lines []string
	for s != "" && len(lines) < maxLines {
		if len(s) <= room {
			lines = append(lines, indent+s)
			s = ""
			break
		}
		cut := strings.LastIndexByte(s[:room+1], ' ')
		if cut <= 0 {
			cut = room
		}
		lines = append(lines, indent+strings.TrimRight(s[:cut], " "))
		s = strings.TrimLeft(s[cut:], " ")
	}
	if s != "" {
		last := lines[len(lines)-1]
		lines[len(lines)-1] = last[:min(len(last), width-1)] + "~"
	}
	return lines
}

// hostPart writes an address of prefix as its host bits ("::ef2f:140f:a512"),
// anything else in full.
func hostPart(prefix netip.Prefix, addr string) string {
	a, err := netip.ParseAddr(addr)
	if err != nil {
		return "-"
	}
	if !prefix.IsValid() || !prefix.Contains(a) {
		return addr
	}
	b, p := a.As16(), prefix.Addr().As16()
	for i := range b {
		b[i] ^= p[i]
	}
	// Written group by group: netip would print a host part whose first
	// group is ffff as IPv4-mapped ("::ffff:1.2.3.4").
	var groups []string
	for i := range 8 {
		g := binary.BigEndian.Uint16(b[2*i:])
		if g == 0 && len(groups) == 0 {
			continue // the prefix's bits, now zero, and leading zero groups
		}
		groups = append(groups, strconv.FormatUint(uint64(g), 16))
	}
	return "::" + strings.Join(groups, ":")
}

func trunc(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "~"
}

const explainUsage = `Usage: v6reg explain [-format text|json] CONTAINER [from|to PEER port N[/PROTO]]

Says which rule allows a flow, or that none does, where the rule was written
(meta key, job/group/task or label), and the container's drop counters.
CONTAINER is an address, a container ID or name, or a Nomad allocation ID.
PEER is an IPv6 address or a peer as policies write it (@traefik, service:pg).

Examples:
  v6reg explain 2001:db8:1:2:3::4c1
  v6reg explain 5f3a2c1b from 2001:db8:100::7 port 9000/tcp
  v6reg explain web-1 to @internet port 443

Flags:
`

// parseFlow reads "from|to PEER [port N[/PROTO]]" or "... icmp".
func parseFlow(words []string) (api.ExplainQuery, error) {
	var q api.ExplainQuery
	if len(words) == 0 {
		return q, nil
	}
	if words[0] != "from" && words[0] != "to" || len(words) < 2 {
		return q, fmt.Errorf("expected 'from PEER' or 'to PEER', got %q", strings.Join(words, " "))
	}
	q.Direction, q.Peer = words[0], words[1]
	rest := words[2:]
	for len(rest) > 0 {
		switch rest[0] {
		case "port":
			if len(rest) < 2 {
				return q, errors.New("'port' needs a number, e.g. port 443/tcp")
			}
			num, proto, _ := strings.Cut(rest[1], "/")
			n, err := strconv.ParseUint(num, 10, 16)
			if err != nil || n == 0 {
				return q, fmt.Errorf("port %q is not a port number (1-65535)", num)
			}
			q.Port, q.Proto = uint16(n), proto
			rest = rest[2:]
		case "icmp", "ping", "tcp", "udp":
			q.Proto = rest[0]
			rest = rest[1:]
		default:
			return q, fmt.Errorf("unexpected %q: expected 'port N[/tcp|udp]' or 'icmp'", rest[0])
		}
	}
	if q.Port == 0 && q.Proto != "icmp" && q.Proto != "ping" {
		return q, errors.New("a flow needs 'port N[/tcp|udp]' or 'icmp'")
	}
	return q, nil
}

func runExplain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("explain", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, explainUsage); fs.PrintDefaults() }
	format := fs.String("format", "text", "output `format`: text or json")
	socket := socketFlag(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() < 1 {
		fs.Usage()
		return 2
	}
	q, err := parseFlow(fs.Args()[1:])
	if err != nil {
		fmt.Fprintf(stderr, "v6reg explain: %v\n", err)
		return 2
	}
	q.Target = fs.Arg(0)
	v := url.Values{"target": {q.Target}, "direction": {q.Direction}, "peer": {q.Peer}, "proto": {q.Proto}}
	if q.Port != 0 {
		v.Set("port", strconv.Itoa(int(q.Port)))
	}
	var ans api.ExplainAnswer
	if err := apiGet(*socket, "/v1/explain?"+v.Encode(), &ans); err != nil {
		fmt.Fprintf(stderr, "v6reg explain: %v\n", err)
		return 1
	}
	if *format == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(ans)
		return 0
	}
	printExplain(stdout, &ans)
	return 0
}

func printExplain(w io.Writer, ans *api.ExplainAnswer) {
	a := *ans
	a.Container = escapeContainer(a.Container)
	for _, p := range []*string{&a.Verdict, &a.Rule, &a.Source, &a.Reason, &a.IngressSource, &a.EgressSource} {
		*p = escapeText(*p)
	}
	c := a.Container
	fmt.Fprintf(w, "container %s (%s) address %s\n", c.Name, c.ID[:min(12, len(c.ID))], c.Address)
	var who []string
	for _, kv := range [][2]string{{"job", c.Job}, {"group", c.Group}, {"task", c.Task}, {"alloc", c.AllocID}, {"namespace", c.Namespace}} {
		if kv[1] != "" {
			who = append(who, kv[0]+" "+kv[1])
		}
	}
	if len(who) > 0 {
		fmt.Fprintf(w, "  %s\n", strings.Join(who, ", "))
	}
	printRules := func(title, src string, rules []api.RuleState) {
		fmt.Fprintf(w, "  %s", title)
		if src != "" {
			fmt.Fprintf(w, " (from %s)", src)
		}
		fmt.Fprintln(w, ":")
		if len(rules) == 0 {
			fmt.Fprintln(w, "    none: everything denied")
		}
		for _, r := range rules {
			fmt.Fprintf(w, "    %s\n", r.Rule)
		}
	}
	printRules("ingress", a.IngressSource, c.Ingress)
	printRules("egress", a.EgressSource, c.Egress)
	if c.Drops != nil {
		fmt.Fprintf(w, "  dropped: %d packets in, %d packets out\n", c.Drops.IngressPackets, c.Drops.EgressPackets)
	}
	for _, e := range c.Errors {
		fmt.Fprintf(w, "  policy error: %s\n", e)
	}
	switch a.Verdict {
	case "allow":
		fmt.Fprintf(w, "ALLOW by rule %q in %s: %s\n", a.Rule, a.Source, a.Reason)
	case "deny":
		fmt.Fprintf(w, "DENY: %s\n", a.Reason)
	default:
		fmt.Fprintln(w, a.Reason)
	}
}

const ipamUsage = `Usage: v6reg ipam rebuild [-config FILE] [-dev]

Recovery for a damaged lease store (the agent refuses to start on one and
names this command). With the agent stopped, it moves the store aside
(ipam.db.corrupt-TIMESTAMP) and rebuilds the leases from the addresses Docker
has in use on the v6reg network. What is lost: hold-downs (recently released
addresses may be handed out again at once) and grant times.

Flags:
`

func runIPAM(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "rebuild" {
		fmt.Fprint(stderr, ipamUsage)
		return 2
	}
	fs := flag.NewFlagSet("ipam rebuild", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, ipamUsage); fs.PrintDefaults() }
	var f agentFlags
	fs.StringVar(&f.configPath, "config", "", "HCL config `file` (default "+config.DefaultPath+" if it exists)")
	fs.BoolVar(&f.dev, "dev", false, "rebuild the -dev agent's store")
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	cfg, err := loadAgentConfig(f)
	if err != nil {
		fmt.Fprintf(stderr, "v6reg ipam rebuild: invalid configuration:\n%v\n", err)
		return 1
	}
	if fileExists(cfg.APISocket) {
		if _, err := apiClient(cfg.APISocket).Get("http://v6reg/v1/status"); err == nil {
			fmt.Fprintf(stderr, "v6reg ipam rebuild: the agent is running (%s answers); stop it first (systemctl stop v6reg)\n", cfg.APISocket)
			return 1
		}
	}
	dc, err := dockerClient(cfg.Docker.Host)
	if err != nil {
		fmt.Fprintf(stderr, "v6reg ipam rebuild: %v\n", err)
		return 1
	}
	defer func() { _ = dc.Close() }() // only idle HTTP connections to drop
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	movedTo, res, err := ipam.RebuildStore(ctx, ipamConfig(cfg), dc, ipam.ServiceOptions{Log: newLogger(stderr, cfg.LogLevel, cfg.LogFormat)})
	if err != nil {
		fmt.Fprintf(stderr, "v6reg ipam rebuild: %v\n", err)
		return 1
	}
	if movedTo != "" {
		fmt.Fprintf(stdout, "moved the old store to %s\n", movedTo)
	}
	fmt.Fprintf(stdout, "rebuilt %s from docker: %d leases adopted, %d ignored (outside the pools or reserved)\n",
		ipamConfig(cfg).StateFile, len(res.Adopted), len(res.Ignored))
	return 0
}
