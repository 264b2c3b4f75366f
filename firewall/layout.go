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

// TableName is the name of v6reg's tables: `inet v6reg` (the policy) and
// `bridge v6reg` (address to bridge port binding).
const TableName = "v6reg"

// Names of sets and chains in a content, a plan and the model are
// qualified by their table: the inet table's as they are, the bridge
// table's after bridgeQual. Our own names never contain a space.
const bridgeQual = "bridge "

// inBridge qualifies the name of a set or chain of table bridge v6reg.
func inBridge(name string) string { return bridgeQual + name }

// tableOf splits a qualified name into its table and its name there.
func tableOf(qname string) (*nftables.Table, string) {
	if n, ok := strings.CutPrefix(qname, bridgeQual); ok {
		return bridgeTable, n
	}
	return table, qname
}

// elem is one set or map element as the diff sees it.
type elem struct {
	key     []byte
	keyEnd  []byte // last key of a range (concatenated interval set "lists")
	end     bool   // interval end element (rbtree interval sets; none today)
	data    []byte // map value: a peer list id
	comment string // owner
}

func (e elem) id() string {
	if e.end {
		return string(e.key) + "\x01"
	}
	return string(e.key)
}

// same reports whether the live element l is what e wants.
func (e elem) same(l elem) bool {
	return string(e.data) == string(l.data) && string(e.keyEnd) == string(l.keyEnd) && e.comment == l.comment
}

type setSpec struct {
	name     string
	keyType  nftables.SetDatatype
	concat   bool
	idMap    bool // a map whose values are peer list ids (type mark)
	interval bool
	counter  bool
	comment  string
	// hostOrder: the key is in host byte order (a lone iface_index), so
	// nft prints it as the number it is.
	hostOrder bool
}

type ruleSpec struct {
	exprs []expr.Any
}

type chainSpec struct {
	name  string // qualified, see tableOf
	base  bool
	hook  *nftables.ChainHook     // base chains: forward, input or (bridge) prerouting
	prio  *nftables.ChainPriority // base chains; nil: filter (0)
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
	keyListAddr  = nftables.MustConcatSetType(nftables.TypeMark, nftables.TypeIP6Addr)
	keyAddrProto = nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeInetProto)
	keyAddrPort  = nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeInetProto, nftables.TypeInetService)
	keyAddrMAC   = nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeEtherAddr)
	keyAddrIf    = nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeIFIndex)
	keyIfMAC     = nftables.MustConcatSetType(nftables.TypeIFIndex, nftables.TypeEtherAddr)
)

// Static sets and maps; names are part of the table's public shape
// (golden test, `explain`).
var staticSets = []setSpec{
	{name: "containers", keyType: keyAddr, comment: "addresses owned by containers"},
	{name: "in_drop", keyType: keyAddr, counter: true, comment: "ingress drops per container"},
	{name: "eg_drop", keyType: keyAddr, counter: true, comment: "egress drops per container"},
	{name: "mac_bound", keyType: keyAddr, comment: "addresses whose source MAC is checked"},
	{name: "src_mac", keyType: keyAddrMAC, concat: true, comment: "address . MAC of each container"},
	// Maps from a container's address (and protocol, port) to the id of
	// a peer list. They hold data, not verdicts: adding a jump element to
	// a verdict map makes the kernel re-validate every verdict map of the
	// table, walking all their elements, so a change cost grew with the
	// number of containers (see README.md).
	{name: "in_port_list", keyType: keyAddrPort, concat: true, idMap: true},
	{name: "in_proto_list", keyType: keyAddrProto, concat: true, idMap: true},
	{name: "in_icmp_list", keyType: keyAddr, idMap: true},
	{name: "in_any_list", keyType: keyAddr, idMap: true},
	{name: "eg_port_list", keyType: keyAddrPort, concat: true, idMap: true},
	{name: "eg_proto_list", keyType: keyAddrProto, concat: true, idMap: true},
	{name: "eg_icmp_list", keyType: keyAddr, idMap: true},
	{name: "eg_any_list", keyType: keyAddr, idMap: true},
	// The members of every peer list in use: list id . peer prefix. Its
	// size is peer lists x prefixes, independent of the number of
	// containers.
	{name: "lists", keyType: keyListAddr, concat: true, interval: true, comment: "peer list id . peer prefix"},
	// Table bridge v6reg: addresses bound to the bridge port (host-side
	// veth ifindex) of their container (Container.Port).
	{name: inBridge("port_bound"), keyType: keyAddr, comment: "addresses whose bridge port is checked"},
	{name: inBridge("port_src"), keyType: keyAddrIf, concat: true, comment: "address . bridge port ifindex of each container"},
	// Bridge ports of containers whose MAC is known: only that MAC may
	// enter them (any frame: IPv6, ARP, IPv4, anything else).
	{name: inBridge("port_mac_bound"), keyType: nftables.TypeIFIndex, hostOrder: true, comment: "bridge ports whose source MAC is checked"},
	{name: inBridge("port_mac"), keyType: keyIfMAC, concat: true, comment: "bridge port ifindex . MAC of each container"},
}

// listID is a peer list's id: the value of the *_list maps and the first
// field of set "lists". Ids are 32 bits because nft can only print a map
// result that is stored in the packet mark (see directionChain).
type listID uint32

func (id listID) bytes() []byte { return binary.NativeEndian.AppendUint32(nil, uint32(id)) }

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
	m := newModel(s)
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

// peerList is a sorted list of peer names ([PeerAny] alone if it has
// "any") and its id.
type peerList struct {
	id    listID
	peers []string
}

// compiled is one container's share of the table: everything it adds, so
// that removing or changing it touches only these elements.
type compiled struct {
	c     Container // a deep copy of what was compiled, to detect changes
	elems []setElem
	lists []peerList // peer lists its map elements name
	peers []string   // peer sets its rules name
	// seen and kept are the model epoch in which the container was found
	// in the State (seen) and found unchanged (kept).
	seen, kept uint64
}

// compiler turns containers into elements. It assigns peer list ids:
// a hash of the list, probed on a collision so that two lists never share
// an id (that would let one list's peers in through the other's rules).
// The assignment is kept for the compiler's life, so every compiled
// container it handed out stays consistent; it holds one entry per
// distinct peer list ever seen (a few hundred).
type compiler struct {
	ids   map[string]listID // peers joined by \x00 -> id
	taken map[listID]string
}

func newCompiler() *compiler {
	return &compiler{ids: map[string]listID{}, taken: map[listID]string{}}
}

func (cp *compiler) listID(list []string) listID {
	k := strings.Join(list, "\x00")
	if id, ok := cp.ids[k]; ok {
		return id
	}
	for salt := 0; ; salt++ {
		h := sha256.Sum256(fmt.Appendf(nil, "%d\x00%s", salt, k))
		id := listID(binary.BigEndian.Uint32(h[:4]))
		if _, used := cp.taken[id]; id == 0 || used {
			continue
		}
		cp.ids[k] = id
		cp.taken[id] = k
		return id
	}
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
	if ct.Port > 0 {
		ifindex := binary.NativeEndian.AppendUint32(nil, uint32(ct.Port)) //nolint:gosec // G115: Validate keeps Port in 1..MaxInt32
		add(inBridge("port_bound"), elem{key: a, comment: ct.ID})
		add(inBridge("port_src"), elem{key: key(a, ifindex), comment: ct.ID})
		if len(ct.MAC) == 6 {
			add(inBridge("port_mac_bound"), elem{key: ifindex, comment: ct.ID})
			add(inBridge("port_mac"), elem{key: key(ifindex, ct.MAC), comment: ct.ID})
		}
	}
	peerSeen := map[string]bool{}
	listSeen := map[listID]bool{}
	for _, d := range []struct {
		dir   string
		rules []Rule
	}{{"in", ct.Ingress}, {"eg", ct.Egress}} {
		// Rules that share a key are merged into one peer list.
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
					note(d.dir+"_proto_list", key(a, []byte{byte(r.Proto)}), r.Peer)
				}
				for _, pr := range r.Ports {
					for p := int(pr.First); p <= int(pr.Last); p++ {
						note(d.dir+"_port_list", key(a, []byte{byte(r.Proto)}, port(uint16(p))), r.Peer) //nolint:gosec // G115: p is in [First, Last], both uint16
					}
				}
			case ICMP:
				note(d.dir+"_icmp_list", a, r.Peer)
			case Any:
				note(d.dir+"_any_list", a, r.Peer)
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
			pl := peerList{id: cp.listID(list), peers: list}
			if !listSeen[pl.id] {
				listSeen[pl.id] = true
				out.lists = append(out.lists, pl)
			}
			add(kd.set, elem{key: []byte(kd.key), data: pl.id.bytes(), comment: ct.ID})
		}
	}
	return out
}

// listElems computes the elements of set "lists" for one peer list: the
// union of its peer sets' prefixes, merged into disjoint ranges.
func listElems(pl peerList, peerSets func(string) []netip.Prefix) []elem {
	var prefixes []netip.Prefix
	for _, p := range pl.peers {
		if p == PeerAny {
			prefixes = append(prefixes, netip.PrefixFrom(netip.IPv6Unspecified(), 0))
			continue
		}
		prefixes = append(prefixes, peerSets(p)...)
	}
	comment := strings.Join(pl.peers, " ")
	if len(comment) > 120 { // element userdata is limited to 256 bytes
		comment = comment[:117] + "..."
	}
	idb := pl.id.bytes()
	var out []elem
	for _, r := range mergeRanges(prefixes) {
		last := new(big.Int).Sub(r.hi, big.NewInt(1))
		out = append(out, elem{key: key(idb, addr16(r.lo)), keyEnd: key(idb, addr16(last)), comment: comment})
	}
	return out
}

type addrRange struct{ lo, hi *big.Int } // hi exclusive

// mergeRanges turns prefixes into sorted disjoint ranges, merging overlaps
// (the kernel refuses overlapping intervals).
func mergeRanges(prefixes []netip.Prefix) []addrRange {
	var rs []addrRange
	for _, p := range prefixes {
		p = p.Masked()
		lo := new(big.Int).SetBytes(p.Addr().AsSlice())
		size := new(big.Int).Lsh(big.NewInt(1), uint(128-p.Bits()))
		rs = append(rs, addrRange{lo, new(big.Int).Add(lo, size)})
	}
	slices.SortFunc(rs, func(a, b addrRange) int { return a.lo.Cmp(b.lo) })
	var merged []addrRange
	for _, r := range rs {
		if n := len(merged); n > 0 && r.lo.Cmp(merged[n-1].hi) <= 0 {
			if r.hi.Cmp(merged[n-1].hi) > 0 {
				merged[n-1].hi = r.hi
			}
			continue
		}
		merged = append(merged, r)
	}
	return merged
}

// intervalElems turns prefixes into the start/end elements of a
// single-field interval set (rbtree), merging overlaps.
func intervalElems(prefixes []netip.Prefix) []elem {
	top := new(big.Int).Lsh(big.NewInt(1), 128)
	var out []elem
	for _, r := range mergeRanges(prefixes) {
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
		pl.Len = uint32(p.Bits() / 8) //nolint:gosec // G115: an IPv6 prefix has 0..128 bits
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

// directionChain is "ingress" or "egress": one rule per map, in order of
// specificity, then the per-container drop counter, then drop.
//
// A rule looks the container's address (. protocol . port) up in a map
// that gives the id of a peer list, and then looks id . peer address up in
// set "lists". The id is passed from the first lookup to the second in a
// register; the only form of that which nft can print is a map result
// stored in a packet field and read back, so the rule goes through the
// packet mark and gives the mark back within the same rule:
//
//	reg14 = mark              (save; nft does not print the load)
//	reg8  = map lookup        meta mark set <key> map @<dir>_<kind>_list
//	mark  = reg8
//	reg8  = mark              (the id, read back for the second lookup)
//	mark  = reg14             meta mark set meta mark   (the restore)
//	lookup reg8 . peer        meta mark . <peer addr> @lists
//
// Nothing else runs between the set and the restore, so no other rule,
// table or hook ever sees the id in the mark; a miss in the first lookup
// ends the rule before the mark is touched. nft prints the restore as
// `meta mark set meta mark`, which reads as a no-op: it is the saved mark.
func directionChain(dir string) []ruleSpec {
	src := dir == "eg"
	allow := verdict(expr.VerdictAccept, "")
	if src {
		allow = verdict(expr.VerdictGoto, "egress_ok")
	}
	const (
		regID   = 8  // NFT_REG32_00: the list id, then the lists key starts here
		regPeer = 9  // NFT_REG32_01..04: the peer address
		regSave = 14 // NFT_REG32_06: the packet mark on entry
	)
	lookupList := func(set string, keyExprs ...expr.Any) ruleSpec {
		return rule(payloadAddr(src), keyExprs,
			&expr.Meta{Key: expr.MetaKeyMARK, Register: regSave},
			&expr.Lookup{SourceRegister: reg1, SetName: set, IsDestRegSet: true, DestRegister: regID},
			&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: regID},
			&expr.Meta{Key: expr.MetaKeyMARK, Register: regID},
			&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: regSave},
			&expr.Payload{DestRegister: regPeer, Base: expr.PayloadBaseNetworkHeader, Offset: payloadAddr(!src).Offset, Len: 16},
			&expr.Lookup{SourceRegister: regID, SetName: "lists"},
			allow)
	}
	icmp := lookupList(dir + "_icmp_list")
	icmp.exprs = append(icmpType(128, 128), icmp.exprs...)
	return []ruleSpec{
		lookupList(dir+"_port_list",
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg32b},
			&expr.Payload{DestRegister: reg32c, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}),
		lookupList(dir+"_proto_list", &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg32b}),
		icmp,
		lookupList(dir + "_any_list"),
		// No verdict: the lookup only bumps the element's drop counter.
		rule(payloadAddr(src), &expr.Lookup{SourceRegister: reg1, SetName: dir + "_drop"}),
		rule(verdict(expr.VerdictDrop, "")),
	}
}

// antiSpoofing are the rules that drop (and count, see SpoofDrops) a
// packet whose source is in the prefix but is not a container's, or not
// from that container. They run in "egress" (forwarded) and in "node"
// (to the node itself).
func antiSpoofing() []ruleSpec {
	return []ruleSpec{
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
		// is read from the link-layer header, which the forward and input
		// hooks still have for packets from the bridge (routed, or bridged
		// with br_netfilter); see README.md.
		rule(payloadAddr(true), &expr.Lookup{SourceRegister: reg1, SetName: "mac_bound"},
			&expr.Payload{DestRegister: reg32b, Base: expr.PayloadBaseLLHeader, Offset: 6, Len: 6},
			&expr.Lookup{SourceRegister: reg1, SetName: "src_mac", Invert: true},
			&expr.Counter{}, verdict(expr.VerdictDrop, "")),
	}
}

// alwaysAllowed are the first rules of "filter" and "node": replies, the
// ICMPv6 errors and the neighbour discovery that IPv6 needs on a link.
func alwaysAllowed() []ruleSpec {
	return []ruleSpec{
		rule(&expr.Ct{Register: reg1, Key: expr.CtKeySTATE},
			&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4,
				Mask: binary.NativeEndian.AppendUint32(nil, expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED),
				Xor:  []byte{0, 0, 0, 0}},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: []byte{0, 0, 0, 0}},
			verdict(expr.VerdictAccept, "")),
		// RFC 4890: destination-unreachable, packet-too-big,
		// time-exceeded, parameter-problem always pass.
		rule(icmpType(1, 4), verdict(expr.VerdictAccept, "")),
		// Neighbour discovery on the bridge (between containers, seen in
		// forward only with br_netfilter; between a container and the
		// gateway, in input); hop limit 255 = on-link.
		rule(icmpType(133, 137),
			&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: 7, Len: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{255}},
			verdict(expr.VerdictAccept, "")),
	}
}

// nodePortRules turns State.NodePorts into accept rules of chain "node".
// They are rules, not map elements: the list is operator configuration
// that changes rarely, and a change rewrites only chain "node" (atomically).
func nodePortRules(rs []Rule) []ruleSpec {
	accept := verdict(expr.VerdictAccept, "")
	var out []ruleSpec
	for _, r := range rs {
		switch r.Proto {
		case TCP, UDP:
			if len(r.Ports) == 0 {
				out = append(out, rule(l4proto(byte(r.Proto)), accept))
			}
			for _, pr := range r.Ports {
				dport := &expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}
				var match expr.Any = &expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: port(pr.First)}
				if pr.Last != pr.First {
					match = &expr.Range{Op: expr.CmpOpEq, Register: reg1, FromData: port(pr.First), ToData: port(pr.Last)}
				}
				out = append(out, rule(l4proto(byte(r.Proto)), dport, match, accept))
			}
		case ICMP:
			out = append(out, rule(icmpType(128, 128), accept))
		case Any:
			out = append(out, rule(accept))
		}
	}
	return out
}

// loopbackIfindex is LOOPBACK_IFINDEX: lo is interface 1 in every
// network namespace.
const loopbackIfindex = 1

// portMACRule, the first rule of chain prerouting of table bridge v6reg:
// a frame of any protocol entering the bridge port of a container whose
// MAC is known (port_mac_bound) must carry that MAC as its source
// (port_mac: ifindex . MAC); otherwise it is counted (SpoofDrops) and
// dropped before the bridge learns its source MAC. Without it a container
// with NET_RAW (Docker's default) sends one frame, say a gratuitous ARP,
// from another container's MAC, the bridge moves that MAC's forwarding
// entry to the sender's port, and the other container's traffic is
// switched to the sender until the victim talks again; random source
// MACs would fill the forwarding table. The IPv6 rules cannot see this:
// the frame need not be IPv6, and its source address need not be forged.
func portMACRule() ruleSpec {
	const regIf, regMAC = 8, 9 // NFT_REG32_00, NFT_REG32_01..02: ifindex . MAC
	return rule(&expr.Meta{Key: expr.MetaKeyIIF, Register: regIf},
		&expr.Lookup{SourceRegister: regIf, SetName: "port_mac_bound"},
		&expr.Payload{DestRegister: regMAC, Base: expr.PayloadBaseLLHeader, Offset: 6, Len: 6},
		&expr.Lookup{SourceRegister: regIf, SetName: "port_mac", Invert: true},
		&expr.Counter{}, verdict(expr.VerdictDrop, ""))
}

// bridgePortRules are the rules of chain prerouting of table bridge v6reg:
// the MAC check (portMACRule), then: an IPv6 frame entering a bridge port
// whose source address is in the prefix and bound to a port (port_bound)
// must come in through that port (port_src: address . ifindex);
// otherwise it is counted (SpoofDrops) and dropped, before the bridge
// learns its MAC, switches it or hands it to br_netfilter and routing. Sources outside the prefix (:: for DAD,
// link-local for ND, router solicitations, MLD) are not looked at.
//
// meta iif in the bridge family is the port the frame came in on (in the
// inet hooks it is the bridge itself, under br_netfilter too). The rule
// does not match the bridge itself: meta ibrname needs nft_meta_bridge
// (CONFIG_NFT_BRIDGE_META), which kernels may lack (then the whole batch
// would fail with EOPNOTSUPP), and nftables has no key for the bridge's
// ifindex. It needs none: an address of the prefix lives behind exactly
// one port, so the same address entering any other port of any bridge of
// the node is forged too.
func bridgePortRules(prefix netip.Prefix) []ruleSpec {
	return []ruleSpec{portMACRule(), rule(&expr.Meta{Key: expr.MetaKeyPROTOCOL, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binary.BigEndian.AppendUint16(nil, unix.ETH_P_IPV6)},
		matchPrefix(true, prefix),
		payloadAddr(true), &expr.Lookup{SourceRegister: reg1, SetName: "port_bound"},
		&expr.Meta{Key: expr.MetaKeyIIF, Register: reg32b},
		&expr.Lookup{SourceRegister: reg1, SetName: "port_src", Invert: true},
		&expr.Counter{}, verdict(expr.VerdictDrop, ""))}
}

// bridgeFilterPriority is the bridge family's "filter" priority: before
// br_netfilter (NF_BR_PRI_BRNF, 0), which hands IPv6 frames to the inet
// hooks.
var bridgeFilterPriority = nftables.ChainPriorityRef(-200)

func baseChains(prefix netip.Prefix, nodePorts []Rule) []chainSpec {
	egress := append(antiSpoofing(), directionChain("eg")...)
	filter := append(alwaysAllowed(),
		rule(matchPrefix(true, prefix), verdict(expr.VerdictGoto, "egress")),
		rule(verdict(expr.VerdictGoto, "ingress")))
	// Chain "node": packets from a container to the node itself (any of
	// its addresses, the gateway's first). Same start as "filter" and the
	// same anti-spoofing as "egress", then the node services open to every
	// container; the rest counts as the container's egress drop.
	node := append(alwaysAllowed(), antiSpoofing()...)
	node = append(node, nodePortRules(nodePorts)...)
	node = append(node,
		rule(payloadAddr(true), &expr.Lookup{SourceRegister: reg1, SetName: "eg_drop"}),
		rule(verdict(expr.VerdictDrop, "")))
	notIPv6 := rule(&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: []byte{unix.NFPROTO_IPV6}},
		verdict(expr.VerdictReturn, ""))
	chains := []chainSpec{
		{name: "forward", base: true, hook: nftables.ChainHookForward, rules: []ruleSpec{
			notIPv6,
			rule(matchPrefix(true, prefix), verdict(expr.VerdictGoto, "filter")),
			rule(matchPrefix(false, prefix), verdict(expr.VerdictGoto, "filter")),
		}},
		// Traffic addressed to the node goes through input, not forward:
		// without this chain a container reaches every service of the
		// node (on the gateway address or any other). Only packets from the
		// prefix are looked at; the node's own traffic to itself (over lo,
		// possibly from the gateway address) returns untouched.
		{name: "input", base: true, hook: nftables.ChainHookInput, rules: []ruleSpec{
			notIPv6,
			rule(&expr.Meta{Key: expr.MetaKeyIIF, Register: reg1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binary.NativeEndian.AppendUint32(nil, loopbackIfindex)},
				verdict(expr.VerdictReturn, "")),
			rule(matchPrefix(true, prefix), verdict(expr.VerdictGoto, "node")),
		}},
		{name: "filter", rules: filter},
		{name: "egress", rules: egress},
		{name: "egress_ok", rules: []ruleSpec{
			// Container to container: the destination's ingress decides too.
			rule(matchPrefix(false, prefix), verdict(expr.VerdictGoto, "ingress")),
			rule(verdict(expr.VerdictAccept, "")),
		}},
		{name: "ingress", rules: directionChain("in")},
		{name: "node", rules: node},
		{name: inBridge("prerouting"), base: true, hook: nftables.ChainHookPrerouting, prio: bridgeFilterPriority,
			rules: bridgePortRules(prefix)},
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
	_, _ = fmt.Fprintf(h, "%s\n", ch.name) // hash.Hash writes never fail
	for _, r := range ch.rules {
		for _, e := range r.exprs {
			_, _ = fmt.Fprintf(h, "%T%+v;", e, e)
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
