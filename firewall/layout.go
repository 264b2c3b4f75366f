package firewall

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math/big"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// TableName is the name of v6reg's table (family inet).
const TableName = "v6reg"

// elem is one set or map element as the diff sees it.
type elem struct {
	key     []byte
	end     bool   // interval end (peer sets)
	chain   string // verdict map: jump target
	comment string // owner
}

func (e elem) id() string {
	if e.end {
		return string(e.key) + "\x01"
	}
	return string(e.key)
}

// same reports whether the live element l is what e wants.
func (e elem) same(l elem) bool { return e.chain == l.chain && e.comment == l.comment }

type setSpec struct {
	name     string
	keyType  nftables.SetDatatype
	concat   bool
	vmap     bool
	interval bool
	counter  bool
	comment  string
}

type ruleSpec struct {
	exprs []expr.Any
}

type chainSpec struct {
	name  string
	base  bool
	rules []ruleSpec
	tag   string // rule comment: a hash of the chain's rules, to detect edits
}

// content is the full desired (or live) content of the table.
type content struct {
	sets   map[string]setSpec
	elems  map[string]map[string]elem // set -> elem id -> elem
	chains map[string]chainSpec
}

var (
	keyAddr      = nftables.TypeIP6Addr
	keyAddrProto = nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeInetProto)
	keyAddrPort  = nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeInetProto, nftables.TypeInetService)
	keyAddrMAC   = nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeEtherAddr)
)

// Static sets and maps; names are part of the table's public shape
// (golden test, `explain`).
var staticSets = []setSpec{
	{name: "containers", keyType: keyAddr, comment: "addresses owned by containers"},
	{name: "in_drop", keyType: keyAddr, counter: true, comment: "ingress drops per container"},
	{name: "eg_drop", keyType: keyAddr, counter: true, comment: "egress drops per container"},
	{name: "mac_bound", keyType: keyAddr, comment: "addresses whose source MAC is checked"},
	{name: "src_mac", keyType: keyAddrMAC, concat: true, comment: "address . MAC of each container"},
	// Verdict maps that jump to a peer chain. The kernel re-validates every
	// verdict map reachable from a base chain, walking all its elements,
	// whenever an element with a jump is added; that walk, not the diff, is
	// most of the cost of a change at 10k containers (see README.md).
	{name: "in_port", keyType: keyAddrPort, concat: true, vmap: true},
	{name: "in_proto", keyType: keyAddrProto, concat: true, vmap: true},
	{name: "in_icmp", keyType: keyAddr, vmap: true},
	{name: "in_any", keyType: keyAddr, vmap: true},
	{name: "eg_port", keyType: keyAddrPort, concat: true, vmap: true},
	{name: "eg_proto", keyType: keyAddrProto, concat: true, vmap: true},
	{name: "eg_icmp", keyType: keyAddr, vmap: true},
	{name: "eg_any", keyType: keyAddr, vmap: true},
}

const peerSetPrefix = "peer_"

// peerSetName maps a peer name (any string) to a set name nft prints
// without quoting; the hash keeps distinct names distinct.
func peerSetName(peer string) string {
	var b strings.Builder
	for _, r := range peer {
		if r < 128 && (r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
		if b.Len() >= 32 {
			break
		}
	}
	return peerSetPrefix + b.String() + "_" + shortHash(peer)
}

func shortHash(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:4])
}

// peerChainName names the chain shared by all rules of one direction with
// the same set of peers.
func peerChainName(dir string, peers []string) string {
	return dir + "_" + shortHash(strings.Join(peers, "\x00"))
}

func key(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
		for len(b)%4 != 0 { // concatenations pad each field to 32 bits
			b = append(b, 0)
		}
	}
	return b
}

func port(p uint16) []byte { return binary.BigEndian.AppendUint16(nil, p) }

// desired computes the table content for s. s must be valid.
func desired(s State) content {
	m := newModel(s.Prefix, s.Gateway)
	if _, ok := m.update(s, newCompiler(), nil); !ok {
		panic("desired: invalid state")
	}
	return m.want
}

// setElem is one element and the set it belongs to.
type setElem struct {
	set string
	e   elem
}

// compiled is one container's share of the table: everything it adds, so
// that removing or changing it touches only these elements.
type compiled struct {
	c      Container // a deep copy of what was compiled, to detect changes
	elems  []setElem
	chains []chainSpec // peer chains its map elements jump to
	peers  []string    // peer sets its rules name
	// seen and kept are the model epoch in which the container was found
	// in the State (seen) and found unchanged (kept).
	seen, kept uint64
}

// compiler turns containers into elements. It memoizes peer chains:
// naming and tagging one costs two hashes, and thousands of containers
// share a few peer lists.
type compiler struct {
	chains map[string]chainSpec // dir + "\x00" + peers -> chain
}

func newCompiler() *compiler { return &compiler{chains: map[string]chainSpec{}} }

func (cp *compiler) peerChain(dir string, list []string) chainSpec {
	k := dir + "\x00" + strings.Join(list, "\x00")
	if ch, ok := cp.chains[k]; ok {
		return ch
	}
	if len(cp.chains) > 1<<14 { // bound the memo; it is only a cache
		clear(cp.chains)
	}
	ch := peerChain(peerChainName(dir, list), dir, list)
	cp.chains[k] = ch
	return ch
}

// container computes the elements of one (valid) container.
func (cp *compiler) container(ct Container) *compiled {
	out := &compiled{c: cloneContainer(ct)}
	a := ct.Addr.AsSlice()
	add := func(set string, e elem) { out.elems = append(out.elems, setElem{set, e}) }
	add("containers", elem{key: a, comment: ct.ID})
	add("in_drop", elem{key: a, comment: ct.ID})
	add("eg_drop", elem{key: a, comment: ct.ID})
	if len(ct.MAC) == 6 {
		add("mac_bound", elem{key: a, comment: ct.ID})
		add("src_mac", elem{key: key(a, ct.MAC), comment: ct.ID})
	}
	peerSeen := map[string]bool{}
	chainSeen := map[string]bool{}
	for _, d := range []struct {
		dir   string
		rules []Rule
	}{{"in", ct.Ingress}, {"eg", ct.Egress}} {
		// Rules that share a key are merged into one peer chain.
		type keyed struct {
			set, key string
			peers    []string
		}
		var order []string
		peers := map[string]*keyed{}
		note := func(set string, k []byte, peer string) {
			id := set + "\x00" + string(k)
			kd := peers[id]
			if kd == nil {
				kd = &keyed{set: set, key: string(k)}
				peers[id] = kd
				order = append(order, id)
			}
			if !slices.Contains(kd.peers, peer) {
				kd.peers = append(kd.peers, peer)
			}
		}
		for _, r := range d.rules {
			if r.Peer != PeerAny && !peerSeen[r.Peer] {
				peerSeen[r.Peer] = true
				out.peers = append(out.peers, r.Peer)
			}
			switch r.Proto {
			case TCP, UDP:
				if len(r.Ports) == 0 {
					note(d.dir+"_proto", key(a, []byte{byte(r.Proto)}), r.Peer)
				}
				for _, pr := range r.Ports {
					for p := int(pr.First); p <= int(pr.Last); p++ {
						note(d.dir+"_port", key(a, []byte{byte(r.Proto)}, port(uint16(p))), r.Peer)
					}
				}
			case ICMP:
				note(d.dir+"_icmp", a, r.Peer)
			case Any:
				note(d.dir+"_any", a, r.Peer)
			}
		}
		for _, id := range order {
			kd := peers[id]
			list := kd.peers
			if slices.Contains(list, PeerAny) {
				list = []string{PeerAny}
			} else {
				slices.Sort(list)
			}
			ch := cp.peerChain(d.dir, list)
			if !chainSeen[ch.name] {
				chainSeen[ch.name] = true
				out.chains = append(out.chains, ch)
			}
			add(kd.set, elem{key: []byte(kd.key), chain: ch.name, comment: ct.ID})
		}
	}
	return out
}

// peerSetElems computes a peer set's spec and elements.
func peerSetElems(name string, prefixes []netip.Prefix) (setSpec, []elem) {
	sn := peerSetName(name)
	es := intervalElems(prefixes)
	for i := range es {
		if !es[i].end { // the kernel refuses userdata on interval ends
			es[i].comment = name
		}
	}
	return setSpec{name: sn, keyType: keyAddr, interval: true, comment: name}, es
}

// intervalElems turns prefixes into the start/end elements of an interval
// set, merging overlaps (the kernel refuses overlapping intervals).
func intervalElems(prefixes []netip.Prefix) []elem {
	type rng struct{ lo, hi *big.Int }
	var rs []rng
	for _, p := range prefixes {
		p = p.Masked()
		lo := new(big.Int).SetBytes(p.Addr().AsSlice())
		size := new(big.Int).Lsh(big.NewInt(1), uint(128-p.Bits()))
		hi := new(big.Int).Add(lo, size) // exclusive
		rs = append(rs, rng{lo, hi})
	}
	slices.SortFunc(rs, func(a, b rng) int { return a.lo.Cmp(b.lo) })
	var merged []rng
	for _, r := range rs {
		if n := len(merged); n > 0 && r.lo.Cmp(merged[n-1].hi) <= 0 {
			if r.hi.Cmp(merged[n-1].hi) > 0 {
				merged[n-1].hi = r.hi
			}
			continue
		}
		merged = append(merged, r)
	}
	top := new(big.Int).Lsh(big.NewInt(1), 128)
	var out []elem
	for _, r := range merged {
		out = append(out, elem{key: addr16(r.lo)})
		if r.hi.Cmp(top) < 0 { // an interval up to the top of the space has no end element
			out = append(out, elem{key: addr16(r.hi), end: true})
		}
	}
	return out
}

func addr16(i *big.Int) []byte {
	b := make([]byte, 16)
	return i.FillBytes(b)
}

// Registers: NFT_REG_1 is the first 16-byte register; the 32-bit registers
// after a 16-byte address start at NFT_REG32_04 (12).
const (
	reg1   = 1
	reg32b = 12
	reg32c = 13
)

func payloadAddr(src bool) *expr.Payload {
	off := uint32(24)
	if src {
		off = 8
	}
	return &expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: 16}
}

// matchPrefix matches the source or destination address against p.
func matchPrefix(src bool, p netip.Prefix) []expr.Any {
	a := p.Masked().Addr().AsSlice()
	pl := payloadAddr(src)
	if p.Bits()%8 == 0 {
		pl.Len = uint32(p.Bits() / 8)
		return []expr.Any{pl, &expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: a[:pl.Len]}}
	}
	mask := make([]byte, 16)
	for i := 0; i < p.Bits(); i++ {
		mask[i/8] |= 0x80 >> (i % 8)
	}
	return []expr.Any{pl,
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 16, Mask: mask, Xor: make([]byte, 16)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: a},
	}
}

func verdict(k expr.VerdictKind, chain string) *expr.Verdict {
	return &expr.Verdict{Kind: k, Chain: chain}
}

func l4proto(p byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{p}},
	}
}

func icmpType(from, to byte) []expr.Any {
	return append(l4proto(unix.IPPROTO_ICMPV6),
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
		&expr.Range{Op: expr.CmpOpEq, Register: reg1, FromData: []byte{from}, ToData: []byte{to}},
	)
}

func rule(parts ...any) ruleSpec {
	var r ruleSpec
	for _, p := range parts {
		switch v := p.(type) {
		case expr.Any:
			r.exprs = append(r.exprs, v)
		case []expr.Any:
			r.exprs = append(r.exprs, v...)
		default:
			panic(fmt.Sprintf("rule part %T", p))
		}
	}
	return r
}

func peerChain(name, dir string, peers []string) chainSpec {
	src := dir == "in"
	allow := verdict(expr.VerdictAccept, "")
	if !src {
		allow = verdict(expr.VerdictGoto, "egress_ok")
	}
	ch := chainSpec{name: name}
	for _, p := range peers {
		if p == PeerAny {
			ch.rules = append(ch.rules, rule(allow))
			continue
		}
		ch.rules = append(ch.rules, rule(payloadAddr(src),
			&expr.Lookup{SourceRegister: reg1, SetName: peerSetName(p)}, allow))
	}
	return tagged(ch)
}

// directionChain is "ingress" or "egress": the verdict maps in order of
// specificity, then the per-container drop counter, then drop.
func directionChain(dir string) []ruleSpec {
	src := dir == "eg"
	addr := payloadAddr(src)
	lookupMap := func(set string) *expr.Lookup {
		return &expr.Lookup{SourceRegister: reg1, SetName: set, IsDestRegSet: true, DestRegister: 0}
	}
	return []ruleSpec{
		rule(addr,
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg32b},
			&expr.Payload{DestRegister: reg32c, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			lookupMap(dir+"_port")),
		rule(addr, &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg32b}, lookupMap(dir+"_proto")),
		rule(icmpType(128, 128), addr, lookupMap(dir+"_icmp")),
		rule(addr, lookupMap(dir+"_any")),
		// No verdict: the lookup only bumps the element's drop counter.
		rule(addr, &expr.Lookup{SourceRegister: reg1, SetName: dir + "_drop"}),
		rule(verdict(expr.VerdictDrop, "")),
	}
}

func baseChains(prefix netip.Prefix) []chainSpec {
	egress := []ruleSpec{
		// Anti-spoofing 1: a source from the prefix must route back out of
		// the interface it came in on (the bridge), so no other link can
		// use prefix addresses.
		rule(&expr.Fib{Register: reg1, FlagSADDR: true, FlagIIF: true, ResultOIF: true},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{0, 0, 0, 0}},
			&expr.Counter{}, verdict(expr.VerdictDrop, "")),
		// Anti-spoofing 2: only addresses that a container owns may send.
		rule(payloadAddr(true), &expr.Lookup{SourceRegister: reg1, SetName: "containers", Invert: true},
			&expr.Counter{}, verdict(expr.VerdictDrop, "")),
		// Anti-spoofing 3: an address whose container's MAC is known may
		// only be sent from that MAC, so a container cannot use another
		// container's address on the shared bridge. The frame's source MAC
		// is read from the link-layer header, which the forward hook still
		// has for routed packets from the bridge and for bridged ones
		// (br_netfilter); see README.md.
		rule(payloadAddr(true), &expr.Lookup{SourceRegister: reg1, SetName: "mac_bound"},
			&expr.Payload{DestRegister: reg32b, Base: expr.PayloadBaseLLHeader, Offset: 6, Len: 6},
			&expr.Lookup{SourceRegister: reg1, SetName: "src_mac", Invert: true},
			&expr.Counter{}, verdict(expr.VerdictDrop, "")),
	}
	egress = append(egress, directionChain("eg")...)
	chains := []chainSpec{
		{name: "forward", base: true, rules: []ruleSpec{
			rule(&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1},
				&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: []byte{unix.NFPROTO_IPV6}},
				verdict(expr.VerdictReturn, "")),
			rule(matchPrefix(true, prefix), verdict(expr.VerdictGoto, "filter")),
			rule(matchPrefix(false, prefix), verdict(expr.VerdictGoto, "filter")),
		}},
		{name: "filter", rules: []ruleSpec{
			rule(&expr.Ct{Register: reg1, Key: expr.CtKeySTATE},
				&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4,
					Mask: binary.NativeEndian.AppendUint32(nil, expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED),
					Xor:  []byte{0, 0, 0, 0}},
				&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: []byte{0, 0, 0, 0}},
				verdict(expr.VerdictAccept, "")),
			// RFC 4890: destination-unreachable, packet-too-big,
			// time-exceeded, parameter-problem always pass.
			rule(icmpType(1, 4), verdict(expr.VerdictAccept, "")),
			// Neighbour discovery between containers on the bridge (seen
			// here only with br_netfilter); hop limit 255 = on-link.
			rule(icmpType(133, 137),
				&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: 7, Len: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{255}},
				verdict(expr.VerdictAccept, "")),
			rule(matchPrefix(true, prefix), verdict(expr.VerdictGoto, "egress")),
			rule(verdict(expr.VerdictGoto, "ingress")),
		}},
		{name: "egress", rules: egress},
		{name: "egress_ok", rules: []ruleSpec{
			// Container to container: the destination's ingress decides too.
			rule(matchPrefix(false, prefix), verdict(expr.VerdictGoto, "ingress")),
			rule(verdict(expr.VerdictAccept, "")),
		}},
		{name: "ingress", rules: directionChain("in")},
	}
	for i := range chains {
		chains[i] = tagged(chains[i])
	}
	return chains
}

// tagged computes the chain's tag from its rules, so a chain whose rules
// were edited or flushed behind our back is detected and rewritten.
func tagged(ch chainSpec) chainSpec {
	h := sha256.New()
	fmt.Fprintf(h, "%s\n", ch.name)
	for _, r := range ch.rules {
		for _, e := range r.exprs {
			fmt.Fprintf(h, "%T%+v;", e, e)
		}
		h.Write([]byte("\n"))
	}
	ch.tag = "v6reg " + hex.EncodeToString(h.Sum(nil)[:6])
	return ch
}

func ruleUserData(tag string) []byte {
	return userdata.AppendString(nil, udataRuleComment, tag)
}

// udataRuleComment is libnftnl's NFTNL_UDATA_RULE_COMMENT: nft prints it
// as the rule's comment.
const udataRuleComment userdata.Type = 0
