package policies

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// token is a word or a comma of one rule, with its byte offset in the whole
// meta value.
type token struct {
	text  string
	off   int
	comma bool
}

// scanner holds the whole value so that byte offsets turn into the 1-based
// rune columns users see.
type scanner struct {
	src  string
	errs []*Error
	// lastOff and lastCol memoize col: offsets mostly grow, so counting
	// from the previous one keeps long values linear.
	lastOff, lastCol int
}

// MaxValueLen bounds a policy value: a real one is a few hundred bytes, and
// the agent parses whatever a job carries.
const MaxValueLen = 64 << 10

// maxErrors bounds the errors reported for one value.
const maxErrors = 50

func (s *scanner) col(off int) int {
	if off < s.lastOff || s.lastCol == 0 {
		s.lastOff, s.lastCol = 0, 1
	}
	s.lastCol += utf8.RuneCountInString(s.src[s.lastOff:off])
	s.lastOff = off
	return s.lastCol
}

func (s *scanner) errorf(off int, text, hint, format string, args ...any) {
	if len(s.errs) == maxErrors {
		s.errs = append(s.errs, &Error{Column: s.col(off), Msg: "too many errors; fix the ones above first"})
	}
	if len(s.errs) > maxErrors {
		return
	}
	s.errs = append(s.errs, &Error{Column: s.col(off), Text: text, Msg: fmt.Sprintf(format, args...), Hint: hint})
}

// tooLong reports an over-long value as one error.
func (s *scanner) tooLong() bool {
	if len(s.src) <= MaxValueLen {
		return false
	}
	s.errs = append(s.errs, &Error{Column: 1, Msg: fmt.Sprintf("value is %d bytes; a policy is at most %d", len(s.src), MaxValueLen),
		Hint: "use @name sets for long prefix lists"})
	return true
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// lex splits src[start:end] into words and commas.
func lex(src string, start, end int) []token {
	var toks []token
	i := start
	for i < end {
		c := src[i]
		switch {
		case isSpace(c):
			i++
		case c == ',':
			toks = append(toks, token{text: ",", off: i, comma: true})
			i++
		default:
			j := i
			for j < end && !isSpace(src[j]) && src[j] != ',' {
				j++
			}
			toks = append(toks, token{text: src[i:j], off: i})
			i = j
		}
	}
	return toks
}

// splitSemis returns the [start,end) byte ranges between semicolons.
func splitSemis(src string, seps string) [][2]int {
	var out [][2]int
	start := 0
	for i := 0; i < len(src); i++ {
		if strings.IndexByte(seps, src[i]) >= 0 {
			out = append(out, [2]int{start, i})
			start = i + 1
		}
	}
	return append(out, [2]int{start, len(src)})
}

// ParseRules parses the value of v6reg_ingress (dir Ingress) or
// v6reg_egress (dir Egress). It returns every rule that parsed and an error
// for every rule that did not (parsing resumes after the next ';'). The
// errors carry Column, Text, Msg and Hint; the caller adds the location.
// An empty value is no rules: everything is denied.
func ParseRules(value string, dir Direction) ([]Rule, []*Error) {
	s := &scanner{src: value}
	if s.tooLong() {
		return nil, s.errs
	}
	var rules []Rule
	for _, seg := range splitSemis(value, ";") {
		toks := lex(value, seg[0], seg[1])
		if len(toks) == 0 {
			continue // empty rule: "a; ; b" or a trailing ';'
		}
		if r, ok := s.rule(toks, seg[1], dir); ok {
			rules = append(rules, r)
		}
	}
	return rules, s.errs
}

var protoByName = map[string]Proto{"tcp": TCP, "udp": UDP, "icmp": ICMP, "any": Any}

// protoAliases are words people write for a protocol we spell differently.
var protoAliases = map[string]string{"icmpv6": "icmp", "icmp6": "icmp", "ipv6-icmp": "icmp", "ping": "icmp", "echo": "icmp", "all": "any", "*": "any"}

func (s *scanner) rule(toks []token, end int, dir Direction) (Rule, bool) {
	first := toks[0]
	r := Rule{Dir: dir, Col: s.col(first.off)}
	if first.comma {
		s.errorf(first.off, ",", "a rule starts with tcp, udp, icmp or any", "expected a protocol, found ','")
		return r, false
	}
	word, ports, hasSlash := strings.Cut(first.text, "/")
	p, ok := protoByName[word]
	if !ok {
		hint := "use tcp, udp, icmp or any"
		if lw := strings.ToLower(word); protoByName[lw] != 0 {
			hint = "protocols are lower case: " + lw
		} else if a, ok := protoAliases[lw]; ok {
			hint = "write " + a
		} else if c, ok := closest(lw, []string{"tcp", "udp", "icmp", "any"}); ok {
			hint = "did you mean " + c + "?"
		}
		s.errorf(first.off, word, hint, "unknown protocol %q", word)
		return r, false
	}
	r.Proto = p
	i := 1
	if hasSlash {
		r.PortsCol = s.col(first.off + len(word) + 1)
		if !p.hasPorts() {
			hint := "icmp means echo request (ping); write 'icmp " + dir.keyword() + " ...'"
			if p == Any {
				hint = "any is every protocol and port; write tcp/PORTS and udp/PORTS as two rules"
			}
			s.errorf(first.off+len(word), "/"+ports, hint, "%s takes no ports", p)
			return r, false
		}
		pr, ok := s.portRange(ports, first.off+len(word)+1, "'/'")
		if !ok {
			return r, false
		}
		r.Ports = append(r.Ports, pr)
		// More ports follow as ", PORT"; peers only ever follow the
		// direction keyword, so a comma before it always continues the
		// port list.
		for i+1 < len(toks) && toks[i].comma {
			if w := toks[i+1].text; w == "from" || w == "to" {
				s.errorf(toks[i].off, ",", "a comma before '"+w+"' continues the port list; remove it", "expected a port after ',', found %q", w)
				return r, false
			}
			pr, ok := s.portRange(toks[i+1].text, toks[i+1].off, "','")
			if !ok {
				return r, false
			}
			r.Ports = append(r.Ports, pr)
			i += 2
		}
		if i < len(toks) && toks[i].comma {
			s.errorf(end, "", "a comma in a port list must be followed by a port", "expected a port after ',', found end of rule")
			return r, false
		}
		r.Ports = mergePorts(r.Ports)
	} else if p.hasPorts() {
		r.Ports = []PortRange{AllPorts}
	}
	kw := dir.keyword()
	if i >= len(toks) {
		s.errorf(end, "", "write e.g. '"+first.text+" "+kw+" @name'", "expected '%s', found end of rule", kw)
		return r, false
	}
	t := toks[i]
	if t.text != kw {
		other := Egress
		if dir == Egress {
			other = Ingress
		}
		switch {
		case t.text == other.keyword():
			s.errorf(t.off, t.text, fmt.Sprintf("%s rules say who may %s; write '%s', or move this rule to v6reg_%s", dir, map[Direction]string{Ingress: "connect in", Egress: "be reached"}[dir], kw, other), "'%s' in an %s rule", t.text, dir)
		case strings.EqualFold(t.text, kw):
			s.errorf(t.off, t.text, "write '"+kw+"' in lower case", "expected 'from' or 'to', found %q", t.text)
		default:
			hint := "write e.g. '" + first.text + " " + kw + " @name'"
			if c, ok := closest(t.text, []string{kw}); ok && !t.comma {
				hint = "did you mean '" + c + "'?"
			} else if t.text == "-" || strings.HasPrefix(t.text, "-") {
				hint = "write a port range without spaces: 8000-8100"
			} else if strings.HasPrefix(t.text, "/") {
				hint = "write the protocol and its ports without spaces: tcp/80"
			}
			s.errorf(t.off, t.text, hint, "expected 'from' or 'to', found %q", t.text)
		}
		return r, false
	}
	i++
	for {
		if i >= len(toks) || toks[i].comma {
			after := "'" + kw + "'"
			if len(r.Peers) > 0 {
				after = "','"
			}
			off, text := end, ""
			if i < len(toks) {
				off, text = toks[i].off, ","
			}
			s.errorf(off, text, "a peer is an IPv6 prefix, @name, service:NAME, job:NAME or any", "expected a peer after %s, found %s", after, foundText(text))
			return r, false
		}
		peer, ok := s.peer(toks[i])
		if !ok {
			return r, false
		}
		r.Peers = append(r.Peers, peer)
		i++
		if i >= len(toks) {
			return r, true
		}
		if !toks[i].comma {
			hint := "separate peers with ',' and rules with ';'"
			if toks[i].text == "from" || toks[i].text == "to" {
				hint = "start a new rule after ';'"
			}
			s.errorf(toks[i].off, toks[i].text, hint, "expected ',' or ';' after a peer, found %q", toks[i].text)
			return r, false
		}
		i++
	}
}

func foundText(text string) string {
	if text == "" {
		return "end of rule"
	}
	return "'" + text + "'"
}

// portRange parses "N" or "N-M" at byte offset off.
func (s *scanner) portRange(text string, off int, after string) (PortRange, bool) {
	if text == "" || text == "," {
		s.errorf(off, "", "write a port (80), a range (8000-8100) or a list (80,443)", "expected a port after %s", after)
		return PortRange{}, false
	}
	lo, hi, isRange := strings.Cut(text, "-")
	from, ok := s.port(lo, off)
	if !ok {
		return PortRange{}, false
	}
	if !isRange {
		return PortRange{from, from}, true
	}
	to, ok := s.port(hi, off+len(lo)+1)
	if !ok {
		return PortRange{}, false
	}
	if from > to {
		s.errorf(off, text, fmt.Sprintf("write %d-%d", to, from), "port range %s is reversed", text)
		return PortRange{}, false
	}
	return PortRange{from, to}, true
}

func (s *scanner) port(text string, off int) (uint16, bool) {
	if text == "" {
		s.errorf(off, "", "ports are numbers from 1 to 65535", "expected a port number")
		return 0, false
	}
	for i := 0; i < len(text); i++ {
		if text[i] < '0' || text[i] > '9' {
			hint := "ports are numbers from 1 to 65535"
			if strings.ContainsRune(text, '/') {
				hint = "name the protocol once per rule: tcp/80,443"
			} else if strings.ContainsRune(text, ':') {
				hint = "ports are numbers; peers follow 'from' or 'to'"
			}
			s.errorf(off, text, hint, "invalid port %q", text)
			return 0, false
		}
	}
	n, err := strconv.Atoi(text)
	if err != nil || n < 1 || n > 65535 {
		s.errorf(off, text, "ports range from 1 to 65535", "port %s is out of range", text)
		return 0, false
	}
	return uint16(n), true
}

// mergePorts sorts ranges and merges those that overlap or touch, so that
// equal port sets always print the same.
func mergePorts(in []PortRange) []PortRange {
	slices.SortFunc(in, func(a, b PortRange) int { return int(a.From) - int(b.From) })
	out := in[:1]
	for _, r := range in[1:] {
		last := &out[len(out)-1]
		if uint32(r.From) <= uint32(last.To)+1 {
			last.To = max(last.To, r.To)
			continue
		}
		out = append(out, r)
	}
	return slices.Clip(out)
}

// validName reports whether s is a usable name for @sets, services and
// jobs: letters, digits, '-', '_' and '.', starting with a letter or digit.
func validName(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || c != '-' && c != '_' && c != '.') {
			return false
		}
	}
	return true
}

func (s *scanner) peer(t token) (Peer, bool) {
	p := Peer{Col: s.col(t.off)}
	w := t.text
	skip := 0 // bytes of "NS/" in service:NS/NAME, before the name
	named := func(kind PeerKind, prefix, what string) (Peer, bool) {
		name := w[len(prefix)+skip:]
		if !validName(name) {
			if name == "" {
				s.errorf(t.off, w, "write e.g. "+prefix+"postgres", "expected a %s name after '%s'", what, w[:len(prefix)+skip])
			} else {
				s.errorf(t.off+len(prefix)+skip, name, "names use letters, digits, '-', '_' and '.', and start with a letter or digit", "invalid %s name %q", what, name)
			}
			return p, false
		}
		p.Kind, p.Name = kind, name
		return p, true
	}
	switch {
	case w == "any":
		p.Kind = PeerAny
		return p, true
	case strings.HasPrefix(w, "@"):
		return named(PeerSet, "@", "set")
	case strings.HasPrefix(w, "service:"):
		if ns, _, ok := strings.Cut(w[len("service:"):], "/"); ok {
			// service:NS/NAME: NAME as registered in namespace NS.
			if !ValidNamespace(ns) {
				s.errorf(t.off+len("service:"), ns, "write service:NAMESPACE/NAME, the namespace in letters, digits and '-'", "invalid namespace %q", ns)
				return p, false
			}
			skip = len(ns) + 1
			pp, ok := named(PeerService, "service:", "service")
			pp.Namespace = ns
			return pp, ok
		}
		return named(PeerService, "service:", "service")
	case strings.HasPrefix(w, "job:"):
		return named(PeerJob, "job:", "job")
	case strings.EqualFold(w, "any"):
		s.errorf(t.off, w, "write any in lower case", "unknown peer %q", w)
		return p, false
	}
	if strings.ContainsAny(w, ":/.") {
		var pfx netip.Prefix
		var err error
		if strings.Contains(w, "/") {
			pfx, err = netip.ParsePrefix(w)
		} else {
			var a netip.Addr
			a, err = netip.ParseAddr(w)
			if err == nil && a.Zone() != "" {
				s.errorf(t.off, w, "drop the %zone: rules match routed addresses", "address %q has a zone", w)
				return p, false
			}
			if err == nil {
				pfx = netip.PrefixFrom(a, a.BitLen())
			}
		}
		switch {
		case err != nil:
			hint := "write an address like 2001:db8::1 or a prefix like 2001:db8::/32"
			if k, _, ok := strings.Cut(w, ":"); ok && (strings.EqualFold(k, "service") || strings.EqualFold(k, "job")) {
				hint = "write " + strings.ToLower(k) + ": in lower case"
			}
			s.errorf(t.off, w, hint, "invalid IPv6 prefix %q", w)
			return p, false
		case pfx.Addr().Is4():
			s.errorf(t.off, w, "rules take IPv6 prefixes; for IPv4 egress ask the operator for an @name that holds it", "%q is IPv4", w)
			return p, false
		case pfx != pfx.Masked():
			s.errorf(t.off, w, "write "+pfx.Masked().String(), "prefix %s has bits set after /%d", w, pfx.Bits())
			return p, false
		}
		p.Kind, p.Prefix = PeerPrefix, pfx
		return p, true
	}
	hint := "a peer is an IPv6 prefix, @name, service:NAME, job:NAME or any"
	if validName(w) {
		hint = "operator sets are written with '@': @" + w
	}
	s.errorf(t.off, w, hint, "unknown peer %q", w)
	return p, false
}

// ParseServices parses the value of v6reg_services: entries
// "name:port[:http|https|tcp]" separated by ',' or ';', http and https
// optionally followed by the path their check asks for ("web:80:http/healthz").
// The check kind defaults to tcp, which needs nothing from the application.
func ParseServices(value string) ([]Service, []*Error) {
	s := &scanner{src: value}
	if s.tooLong() {
		return nil, s.errs
	}
	var out []Service
	seen := map[string]int{}
	for _, seg := range splitSemis(value, ",;") {
		toks := lex(value, seg[0], seg[1])
		if len(toks) == 0 {
			continue
		}
		if len(toks) > 1 {
			s.errorf(toks[1].off, toks[1].text, "write name:port[:http|https|tcp] without spaces, entries separated by ','", "unexpected %q after service %q", toks[1].text, toks[0].text)
			continue
		}
		svc, ok := s.service(toks[0])
		if !ok {
			continue
		}
		if c, dup := seen[svc.Name]; dup {
			s.errorf(toks[0].off, svc.Name, "give each service its own name", "service %q is declared twice (first at column %d)", svc.Name, c)
			continue
		}
		seen[svc.Name] = svc.Col
		out = append(out, svc)
	}
	return out, s.errs
}

// validServiceName reports whether s is a DNS label, since the service is
// looked up as NAME.service.consul and routed by host name.
func validServiceName(s string) bool {
	if s == "" || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return false
		}
	}
	return true
}

var checkByName = map[string]CheckKind{"tcp": CheckTCP, "http": CheckHTTP, "https": CheckHTTPS}

// maxCheckPath bounds the path of an http(s) check.
const maxCheckPath = 256

// checkPathProblem says what is wrong with the path of an http(s) check
// ("" if nothing): a URL path and query of printable ASCII, no fragment,
// and percent signs only as %XX.
func checkPathProblem(p string) string {
	if len(p) > maxCheckPath {
		return fmt.Sprintf("the check path is %d bytes; at most %d", len(p), maxCheckPath)
	}
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("-._~!$&'()*+=:@/?", c) >= 0:
		case c == '%':
			if i+2 >= len(p) || !isHex(p[i+1]) || !isHex(p[i+2]) {
				return "a '%' in the check path must start %XX"
			}
		default:
			return fmt.Sprintf("the check path holds %q: write it percent-encoded (%%%02X)", c, c)
		}
	}
	return ""
}

func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

func (s *scanner) service(t token) (Service, bool) {
	svc := Service{Col: s.col(t.off), Check: CheckTCP}
	parts := strings.SplitN(t.text, ":", 3)
	if len(parts) < 2 || strings.Contains(parts[1], "/") {
		s.errorf(t.off, t.text, "write name:port[:http|https|tcp], e.g. web:8080:http", "invalid service %q", t.text)
		return svc, false
	}
	name, port := parts[0], parts[1]
	if !validServiceName(name) {
		hint := "service names are DNS labels: lower case letters, digits and '-', at most 63"
		if name == "" {
			hint = "write name:port, e.g. web:8080"
		}
		s.errorf(t.off, name, hint, "invalid service name %q", name)
		return svc, false
	}
	n, ok := s.port(port, t.off+len(name)+1)
	if !ok {
		return svc, false
	}
	svc.Name, svc.Port = name, n
	if len(parts) == 3 {
		off := t.off + len(name) + len(port) + 2
		kind, path := parts[2], ""
		if i := strings.IndexByte(kind, '/'); i >= 0 {
			kind, path = kind[:i], kind[i:]
		}
		k, ok := checkByName[kind]
		if !ok {
			hint := "the check is http, https or tcp, e.g. web:8080:http or web:8080:http/healthz"
			if lk := strings.ToLower(kind); checkByName[lk] != 0 {
				hint = "write " + lk
			}
			s.errorf(off, kind, hint, "unknown check %q", kind)
			return svc, false
		}
		svc.Check = k
		if path != "" {
			if k == CheckTCP {
				s.errorf(off+len(kind), path, "a tcp check connects to the port; use http or https to check a path", "a tcp check has no path (%q)", path)
				return svc, false
			}
			if p := checkPathProblem(path); p != "" {
				s.errorf(off+len(kind), path, "e.g. web:8080:http/healthz; the path must answer 2xx itself (the check follows no redirect)", "invalid check path %q: %s", path, p)
				return svc, false
			}
			if path != "/" {
				svc.Path = path // "/" is the default: kept as ""
			}
		}
	}
	return svc, true
}
