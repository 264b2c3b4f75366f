package firewall

import (
	"bytes"
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

	keyAddr4      = nftables.TypeIPAddr
	keyListAddr4  = nftables.MustConcatSetType(nftables.TypeMark, nftables.TypeIPAddr)
	keyAddr4Proto = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto)
	keyAddr4Port  = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService)
	keyAddr4MAC   = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeEtherAddr)
	keyAddr4If    = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeIFIndex)
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
	// IPv4 egress (State.Bridge, Container.Addr4): the same peer lists,
	// keyed by the container's IPv4 address; their IPv4 prefixes live in
	// "lists4". There is no IPv4 ingress.
	{name: "containers4", keyType: keyAddr4, comment: "IPv4 addresses owned by containers"},
	{name: "eg4_drop", keyType: keyAddr4, counter: true, comment: "IPv4 egress drops per container"},
	{name: "mac_bound4", keyType: keyAddr4, comment: "IPv4 addresses whose source MAC is checked"},
	{name: "src_mac4", keyType: keyAddr4MAC, concat: true, comment: "IPv4 address . MAC of each container"},
	{name: "eg4_port_list", keyType: keyAddr4Port, concat: true, idMap: true},
	{name: "eg4_proto_list", keyType: keyAddr4Proto, concat: true, idMap: true},
	{name: "eg4_icmp_list", keyType: keyAddr4, idMap: true},
	{name: "eg4_any_list", keyType: keyAddr4, idMap: true},
	{name: "lists4", keyType: keyListAddr4, concat: true, interval: true, comment: "peer list id . IPv4 peer prefix"},
	// Table bridge v6reg: addresses bound to the bridge port (host-side
	// veth ifindex) of their container (Container.Port).
	{name: inBridge("port_bound"), keyType: keyAddr, comment: "addresses whose bridge port is checked"},
	{name: inBridge("port_src"), keyType: keyAddrIf, concat: true, comment: "address . bridge port ifindex of each container"},
	// Bridge ports of containers whose MAC is known: only that MAC may
	// enter them (any frame: IPv6, ARP, IPv4, anything else).
	{name: inBridge("port_mac_bound"), keyType: nftables.TypeIFIndex, hostOrder: true, comment: "bridge ports whose source MAC is checked"},
	{name: inBridge("port_mac"), keyType: keyIfMAC, concat: true, comment: "bridge port ifindex . MAC of each container"},
	// IPv4 address . bridge port of each container with Addr4 and Port:
	// IPv4 and ARP from a bound port must carry the container's own
	// IPv4 address.
	{name: inBridge("port_src4"), keyType: keyAddr4If, concat: true, comment: "IPv4 address . bridge port ifindex of each container"},
	// Bridge ports of closed containers (Container.Closed): every frame
	// entering them is dropped, and counted on the element (the
	// container's egress drops).
	{name: inBridge("port_closed"), keyType: nftables.TypeIFIndex, hostOrder: true, counter: true, comment: "bridge ports of closed containers: every frame dropped"},
}

// listID is a peer list's id: the value of the *_list maps and the first
// field of set "lists". Ids are 32 bits because nft can only print a map
// result that is stored in the packet mark (see directionChain).
type listID uint32

func (id listID) bytes() []byte { return binary.NativeEndian.AppendUint32(nil, uint32(id)) }

func key(parts ...[]byte) []byte {
	n := 0
	for _, p := range parts {
		n += (len(p) + 3) &^ 3
	}
	b := make([]byte, 0, n)
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
	if _, ok := m.update(s, newCompiler(), nil, false); !ok {
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
	pos   int        // index in model.order
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
	// keyed is container's scratch map (merging the rules that share a
	// key), cleared and reused: it ran 20,000 times for 10,000 containers.
	keyed map[string]int
	buf   []byte
	idb   map[listID][]byte
}

func newCompiler() *compiler {
	return &compiler{ids: map[string]listID{}, taken: map[listID]string{}}
}

// idBytes is id.bytes(), one slice per id shared by every element that
// holds it (elements are never modified).
func (cp *compiler) idBytes(id listID) []byte {
	if b, ok := cp.idb[id]; ok {
		return b
	}
	if cp.idb == nil {
		cp.idb = map[listID][]byte{}
	}
	b := id.bytes()
	cp.idb[id] = b
	return b
}

func (cp *compiler) listID(list []string) listID {
	cp.buf = cp.buf[:0]
	for i, p := range list {
		if i > 0 {
			cp.buf = append(cp.buf, 0)
		}
		cp.buf = append(cp.buf, p...)
	}
	if id, ok := cp.ids[string(cp.buf)]; ok { // no string is built for the lookup
		return id
	}
	k := string(cp.buf)
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

// dirSetNames are the names of the maps of each direction.
var dirSetNames = map[string]struct{ port, proto, icmp, any string }{
	"in":  {"in_port_list", "in_proto_list", "in_icmp_list", "in_any_list"},
	"eg":  {"eg_port_list", "eg_proto_list", "eg_icmp_list", "eg_any_list"},
	"eg4": {"eg4_port_list", "eg4_proto_list", "eg4_icmp_list", "eg4_any_list"},
}

// container computes the elements of one (valid) container.
func (cp *compiler) container(ct Container) *compiled {
	out := &compiled{c: cloneContainer(ct), elems: make([]setElem, 0, 16)}
	add := func(set string, e elem) { out.elems = append(out.elems, setElem{set, e}) }
	if ct.Closed {
		// Its port and nothing else: no address, no binding, no rule.
		add(inBridge("port_closed"), elem{key: binary.NativeEndian.AppendUint32(nil, uint32(ct.Port)), comment: ct.ID}) //nolint:gosec // G115: Validate keeps Port in 1..MaxInt32
		return out
	}
	a := ct.Addr.AsSlice()
	add("containers", elem{key: a, comment: ct.ID})
	add("in_drop", elem{key: a, comment: ct.ID})
	add("eg_drop", elem{key: a, comment: ct.ID})
	if len(ct.MAC) == 6 {
		add("mac_bound", elem{key: a, comment: ct.ID})
		add("src_mac", elem{key: key(a, ct.MAC), comment: ct.ID})
	}
	var a4 []byte
	if ct.Addr4.IsValid() {
		a4 = ct.Addr4.AsSlice()
		add("containers4", elem{key: a4, comment: ct.ID})
		add("eg4_drop", elem{key: a4, comment: ct.ID})
		if len(ct.MAC) == 6 {
			add("mac_bound4", elem{key: a4, comment: ct.ID})
			add("src_mac4", elem{key: key(a4, ct.MAC), comment: ct.ID})
		}
	}
	if ct.Port > 0 {
		ifindex := binary.NativeEndian.AppendUint32(nil, uint32(ct.Port)) //nolint:gosec // G115: Validate keeps Port in 1..MaxInt32
		if a4 != nil {
			add(inBridge("port_src4"), elem{key: key(a4, ifindex), comment: ct.ID})
		}
		add(inBridge("port_bound"), elem{key: a, comment: ct.ID})
		add(inBridge("port_src"), elem{key: key(a, ifindex), comment: ct.ID})
		if len(ct.MAC) == 6 {
			add(inBridge("port_mac_bound"), elem{key: ifindex, comment: ct.ID})
			add(inBridge("port_mac"), elem{key: key(ifindex, ct.MAC), comment: ct.ID})
		}
	}
	dirs := []struct {
		dir   string
		addr  []byte
		rules []Rule
	}{{"in", a, ct.Ingress}, {"eg", a, ct.Egress}}
	if a4 != nil {
		// IPv4 egress follows the same rules: the peer lists are shared,
		// their IPv4 prefixes are in "lists4".
		dirs = append(dirs, struct {
			dir   string
			addr  []byte
			rules []Rule
		}{"eg4", a4, ct.Egress})
	}
	for _, d := range dirs {
		a := d.addr
		// Rules that share a key are merged into one peer list.
		type keyed struct {
			set   string
			key   []byte
			peers []string
		}
		sn := dirSetNames[d.dir]
		order := make([]keyed, 0, 8)
		indexed := false // cp.keyed indexes order (only for many keys)
		note := func(set string, k []byte, peer string) {
			i := -1
			if !indexed {
				i = slices.IndexFunc(order, func(o keyed) bool { return o.set == set && bytes.Equal(o.key, k) })
			} else {
				cp.buf = append(append(append(cp.buf[:0], set...), 0), k...)
				if j, ok := cp.keyed[string(cp.buf)]; ok {
					i = j
				}
			}
			if i < 0 {
				i = len(order)
				order = append(order, keyed{set: set, key: k})
				if !indexed && len(order) > 16 { // port ranges: linear search would be quadratic
					if cp.keyed == nil {
						cp.keyed = map[string]int{}
					}
					clear(cp.keyed)
					for j, o := range order {
						cp.keyed[string(append(append([]byte(o.set), 0), o.key...))] = j
					}
					indexed = true
				} else if indexed {
					cp.keyed[string(cp.buf)] = i
				}
			}
			if kd := &order[i]; !slices.Contains(kd.peers, peer) {
				kd.peers = append(kd.peers, peer)
			}
		}
		proto := make([]byte, 1)
		for _, r := range d.rules {
			if r.Peer != PeerAny && !slices.Contains(out.peers, r.Peer) {
				out.peers = append(out.peers, r.Peer)
			}
			switch r.Proto {
			case TCP, UDP:
				if len(r.Ports) == 0 {
					proto[0] = byte(r.Proto)
					note(sn.proto, key(a, proto), r.Peer)
				}
				proto[0] = byte(r.Proto)
				var pb [2]byte
				for _, pr := range r.Ports {
					for p := int(pr.First); p <= int(pr.Last); p++ {
						binary.BigEndian.PutUint16(pb[:], uint16(p)) //nolint:gosec // G115: p is in [First, Last], both uint16
						note(sn.port, key(a, proto, pb[:]), r.Peer)
					}
				}
			case ICMP:
				note(sn.icmp, a, r.Peer)
			case Any:
				note(sn.any, a, r.Peer)
			}
		}
		for i := range order {
			kd := &order[i]
			list := kd.peers
			if slices.Contains(list, PeerAny) {
				list = []string{PeerAny}
			} else {
				slices.Sort(list)
			}
			pl := peerList{id: cp.listID(list), peers: list}
			if !slices.ContainsFunc(out.lists, func(o peerList) bool { return o.id == pl.id }) {
				out.lists = append(out.lists, pl)
			}
			add(kd.set, elem{key: kd.key, data: cp.idBytes(pl.id), comment: ct.ID})
		}
	}
	return out
}

// listElems computes the elements of sets "lists" (IPv6) and "lists4"
// (IPv4) for one peer list: the union of its peer sets' prefixes of each
// family, merged into disjoint ranges. PeerAny is both families' whole
// space.
func listElems(pl peerList, peerSets func(string) []netip.Prefix) []setElem {
	var v6, v4 []netip.Prefix
	for _, p := range pl.peers {
		if p == PeerAny {
			v6 = append(v6, netip.PrefixFrom(netip.IPv6Unspecified(), 0))
			v4 = append(v4, netip.PrefixFrom(netip.IPv4Unspecified(), 0))
			continue
		}
		for _, pf := range peerSets(p) {
			if pf.Addr().Is4() {
				v4 = append(v4, pf)
			} else {
				v6 = append(v6, pf)
			}
		}
	}
	comment := strings.Join(pl.peers, " ")
	if len(comment) > 120 { // element userdata is limited to 256 bytes
		comment = comment[:117] + "..."
	}
	idb := pl.id.bytes()
	var out []setElem
	for _, fam := range []struct {
		set      string
		prefixes []netip.Prefix
		width    int
	}{{"lists", v6, 16}, {"lists4", v4, 4}} {
		for _, r := range mergeRanges(fam.prefixes) {
			last := new(big.Int).Sub(r.hi, big.NewInt(1))
			out = append(out, setElem{fam.set, elem{key: key(idb, addrBytes(r.lo, fam.width)), keyEnd: key(idb, addrBytes(last, fam.width)), comment: comment}})
		}
	}
	return out
}

type addrRange struct{ lo, hi *big.Int } // hi exclusive

// mergeRanges turns prefixes of one family into sorted disjoint ranges,
// merging overlaps (the kernel refuses overlapping intervals).
func mergeRanges(prefixes []netip.Prefix) []addrRange {
	var rs []addrRange
	for _, p := range prefixes {
		p = p.Masked()
		lo := new(big.Int).SetBytes(p.Addr().AsSlice())
		size := new(big.Int).Lsh(big.NewInt(1), uint(p.Addr().BitLen()-p.Bits())) //nolint:gosec // G115: Bits <= BitLen
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

func addr16(i *big.Int) []byte { return addrBytes(i, 16) }

// addrBytes is i as an address of width bytes (16: IPv6, 4: IPv4).
func addrBytes(i *big.Int, width int) []byte {
	b := make([]byte, width)
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

// payloadAddr4 loads an IPv4 packet's source or destination address.
func payloadAddr4(src bool) *expr.Payload {
	off := uint32(16)
	if src {
		off = 12
	}
	return &expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: 4}
}

// matchPrefix matches the source or destination address against p.
func matchPrefix(src bool, p netip.Prefix) []expr.Any {
	return matchPrefixAt(payloadAddr(src), p, expr.CmpOpEq)
}

// matchPrefixAt compares the address that pl loads (into register 1) with
// p: op CmpOpEq matches inside p, CmpOpNeq outside.
func matchPrefixAt(pl *expr.Payload, p netip.Prefix, op expr.CmpOp) []expr.Any {
	a := p.Masked().Addr().AsSlice()
	pl = &expr.Payload{DestRegister: reg1, Base: pl.Base, Offset: pl.Offset, Len: uint32(len(a))} //nolint:gosec // G115: 4 or 16
	if p.Bits()%8 == 0 {
		pl.Len = uint32(p.Bits() / 8) //nolint:gosec // G115: a prefix has 0..128 bits
		return []expr.Any{pl, &expr.Cmp{Op: op, Register: reg1, Data: a[:pl.Len]}}
	}
	mask := make([]byte, len(a))
	for i := 0; i < p.Bits(); i++ {
		mask[i/8] |= 0x80 >> (i % 8)
	}
	return []expr.Any{pl,
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: pl.Len, Mask: mask, Xor: make([]byte, len(a))},
		&expr.Cmp{Op: op, Register: reg1, Data: a},
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

// icmp4Type matches an ICMP (IPv4) message type.
func icmp4Type(t byte) []expr.Any {
	return append(l4proto(unix.IPPROTO_ICMP),
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{t}},
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

// directionChain is "ingress" or "egress" (dir "in", "eg"), or
// "egress4" (dir "eg4", IPv4): one rule per map, in order of
// specificity, then the per-container drop counter, then drop.
//
// A rule looks the container's address (. protocol . port) up in a map
// that gives the id of a peer list, and then looks id . peer address up in
// set "lists" ("lists4" for IPv4). The id is passed from the first lookup
// to the second in a register; the only form of that which nft can print
// is a map result stored in a packet field and read back, so the rule goes
// through the packet mark and gives the mark back within the same rule:
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
	src := dir != "in"
	v4 := dir == "eg4"
	allow := verdict(expr.VerdictAccept, "")
	if dir == "eg" {
		allow = verdict(expr.VerdictGoto, "egress_ok")
	}
	const (
		regID   = 8  // NFT_REG32_00: the list id, then the lists key starts here
		regPeer = 9  // NFT_REG32_01..04: the peer address
		regSave = 14 // NFT_REG32_06: the packet mark on entry
	)
	own, peer, lists := payloadAddr(src), payloadAddr(!src), "lists"
	var regProto, regPort uint32 = reg32b, reg32c
	if v4 {
		own, peer, lists = payloadAddr4(true), payloadAddr4(false), "lists4"
		regProto, regPort = 9, 10 // after a 4-byte address
	}
	peer = &expr.Payload{DestRegister: regPeer, Base: peer.Base, Offset: peer.Offset, Len: peer.Len}
	lookupList := func(set string, keyExprs ...expr.Any) ruleSpec {
		return rule(own, keyExprs,
			&expr.Meta{Key: expr.MetaKeyMARK, Register: regSave},
			&expr.Lookup{SourceRegister: reg1, SetName: set, IsDestRegSet: true, DestRegister: regID},
			&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: regID},
			&expr.Meta{Key: expr.MetaKeyMARK, Register: regID},
			&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: regSave},
			peer,
			&expr.Lookup{SourceRegister: regID, SetName: lists},
			allow)
	}
	icmp := lookupList(dir + "_icmp_list")
	if v4 {
		icmp.exprs = append(icmp4Type(8), icmp.exprs...)
	} else {
		icmp.exprs = append(icmpType(128, 128), icmp.exprs...)
	}
	return []ruleSpec{
		lookupList(dir+"_port_list",
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: regProto},
			&expr.Payload{DestRegister: regPort, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}),
		lookupList(dir+"_proto_list", &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: regProto}),
		icmp,
		lookupList(dir + "_any_list"),
		// No verdict: the lookup only bumps the element's drop counter.
		rule(own, &expr.Lookup{SourceRegister: reg1, SetName: dir + "_drop"}),
		rule(verdict(expr.VerdictDrop, "")),
	}
}

// antiSpoofing are the rules that drop (and count, see SpoofDrops) a
// packet whose source is in the prefix but is not a container's, or not
// from that container. They run in "egress" (forwarded) and in "node"
// (to the node itself), for IPv6 sources in the prefix.
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

// antiSpoofing4 is antiSpoofing for IPv4 packets from the bridge: the
// source must be a container's IPv4 address, sent from its MAC.
func antiSpoofing4() []ruleSpec {
	return []ruleSpec{
		rule(payloadAddr4(true), &expr.Lookup{SourceRegister: reg1, SetName: "containers4", Invert: true},
			&expr.Counter{}, verdict(expr.VerdictDrop, "")),
		rule(payloadAddr4(true), &expr.Lookup{SourceRegister: reg1, SetName: "mac_bound4"},
			&expr.Payload{DestRegister: 9, Base: expr.PayloadBaseLLHeader, Offset: 6, Len: 6},
			&expr.Lookup{SourceRegister: reg1, SetName: "src_mac4", Invert: true},
			&expr.Counter{}, verdict(expr.VerdictDrop, "")),
	}
}

// ctReplies accepts packets of flows conntrack knows: replies of allowed
// flows, and ICMP errors (packet too big, unreachable, time exceeded,
// parameter problem) that conntrack relates to one of them. An ICMPv6
// error about no known flow is dropped like any other packet: it is not
// a free channel into or out of a container, and one sent to an address
// of the prefix that no container has never makes the node resolve it
// (RFC 6583).
func ctReplies() ruleSpec {
	return rule(&expr.Ct{Register: reg1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4,
			Mask: binary.NativeEndian.AppendUint32(nil, expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED),
			Xor:  []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: []byte{0, 0, 0, 0}},
		verdict(expr.VerdictAccept, ""))
}

// hopLimit matches the IPv6 hop limit.
func hopLimit(h byte) []expr.Any {
	return []expr.Any{&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: 7, Len: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{h}}}
}

// linkProtocols accept what IPv6 needs on the link: neighbour discovery
// (router and neighbour solicitations and advertisements, hop limit 255,
// so never from off the link; router advertisements and redirects from a
// container's port are dropped earlier, in table bridge v6reg) and MLD
// (queries, reports and done, hop limit 1).
func linkProtocols() []ruleSpec {
	return []ruleSpec{
		neighbourDiscovery(),
		rule(icmpType(130, 132), hopLimit(1), verdict(expr.VerdictAccept, "")),
		rule(icmpType(143, 143), hopLimit(1), verdict(expr.VerdictAccept, "")),
	}
}

// alwaysAllowed are the first rules of "filter" and "node": replies and
// related errors, and neighbour discovery from and to the prefix.
func alwaysAllowed() []ruleSpec {
	return []ruleSpec{
		ctReplies(),
		neighbourDiscovery(),
	}
}

// neighbourDiscovery accepts router and neighbour solicitations and
// advertisements on the link (between containers, seen in forward only
// with br_netfilter; between a container and the gateway, in input); hop
// limit 255 = on-link. Redirects (137) pass only from the node, which
// sends them through output.
func neighbourDiscovery() ruleSpec {
	return rule(icmpType(133, 136), hopLimit(255), verdict(expr.VerdictAccept, ""))
}

// nodePortRules turns State.NodePorts into accept rules of chain "node".
// They are rules, not map elements: the list is operator configuration
// that changes rarely, and a change rewrites only chain "node" (atomically).
// The rules match the transport header, so they apply to IPv6 and IPv4
// alike; ICMP is ICMPv6 or ICMP echo requests.
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
			out = append(out, rule(icmpType(128, 128), accept), rule(icmp4Type(8), accept))
		case Any:
			out = append(out, rule(accept))
		}
	}
	return out
}

// loopbackIfindex is LOOPBACK_IFINDEX: lo is interface 1 in every
// network namespace.
const loopbackIfindex = 1

// portClosedRule, the first rule of chain prerouting of table bridge
// v6reg: every frame entering the port of a closed container
// (port_closed, Container.Closed) is dropped, whatever its protocol,
// source MAC or address, before the bridge learns its source MAC. The
// set's element counts it (the container's egress drops), so the rule has
// no counter of its own and SpoofDrops does not count a closed
// container's ordinary chatter. A closed container is one that may not
// have its address or MAC (another container's): it is in none of the
// other sets, so without this rule its port would be unconstrained, and
// with NET_RAW it could take the other's MAC on the bridge, or send
// router advertisements and neighbour advertisements for the gateway.
func portClosedRule() ruleSpec {
	return rule(&expr.Meta{Key: expr.MetaKeyIIF, Register: reg1},
		&expr.Lookup{SourceRegister: reg1, SetName: "port_closed"},
		verdict(expr.VerdictDrop, ""))
}

// portMACRule, the second rule of chain prerouting of table bridge v6reg:
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

// fromContainerPort matches frames entering the bridge port of a known
// container (Port and MAC set: port_mac_bound), keeping the port's ifindex
// in register 8 for a later "address . port" lookup. The rules that start
// with it hold every container port to what a container may send.
func fromContainerPort() []expr.Any {
	return []expr.Any{&expr.Meta{Key: expr.MetaKeyIIF, Register: 8},
		&expr.Lookup{SourceRegister: 8, SetName: "port_mac_bound"}}
}

func ethProto(p uint16) []expr.Any {
	return []expr.Any{&expr.Meta{Key: expr.MetaKeyPROTOCOL, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binary.BigEndian.AppendUint16(nil, p)}}
}

var (
	linkLocal = netip.MustParsePrefix("fe80::/10")
	multicast = netip.MustParsePrefix("ff00::/8")
)

// bridgePortRules are the rules of chain prerouting of table bridge v6reg,
// which sees every frame entering a bridge port before the bridge learns
// its MAC, switches it or hands it to br_netfilter and routing, whatever
// its protocol:
//
//   - a closed container's port drops everything (portClosedRule);
//   - the MAC check (portMACRule);
//   - a source address of the prefix bound to a port (port_bound) enters
//     only through that port (port_src: address . ifindex);
//   - from a container's port: VLAN-tagged frames are dropped (a tag
//     would carry the frame past the IP rules); IPv6 only from the
//     container's own address (port_src), a link-local address (ND, MLD)
//     or :: (DAD); IPv4 and ARP only from its own IPv4 address
//     (port_src4; ARP probes from 0.0.0.0); no router advertisements,
//     redirects or router renumbering, no DHCPv6 server messages; a
//     neighbour advertisement, or a DAD solicitation, for an address of
//     the prefix only for the container's own.
//
// Each drop is counted (SpoofDrops, PortSpoofDrops).
//
// meta iif in the bridge family is the port the frame came in on (in the
// inet hooks it is the bridge itself, under br_netfilter too). The rules
// do not match the bridge itself: meta ibrname needs nft_meta_bridge
// (CONFIG_NFT_BRIDGE_META), which kernels may lack (then the whole batch
// would fail with EOPNOTSUPP), and nftables has no key for the bridge's
// ifindex. They need none: an address of the prefix lives behind exactly
// one port, so the same address entering any other port of any bridge of
// the node is forged too.
func bridgePortRules(prefix netip.Prefix) []ruleSpec {
	drop := []expr.Any{&expr.Counter{}, verdict(expr.VerdictDrop, "")}
	addrPort := func(set string, addr *expr.Payload) []expr.Any {
		// addr . iif (register 8 holds the port from fromContainerPort,
		// so the address goes first into register 9... ) is looked up
		// as the set's key: address first, then the ifindex.
		return []expr.Any{addr, &expr.Meta{Key: expr.MetaKeyIIF, Register: addrNextReg(addr.Len)},
			&expr.Lookup{SourceRegister: reg1, SetName: set, Invert: true}}
	}
	ndTarget := &expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseTransportHeader, Offset: 8, Len: 16}
	return []ruleSpec{
		portClosedRule(),
		portMACRule(),
		rule(ethProto(unix.ETH_P_IPV6), matchPrefix(true, prefix),
			payloadAddr(true), &expr.Lookup{SourceRegister: reg1, SetName: "port_bound"},
			addrPort("port_src", payloadAddr(true)), drop),
		rule(fromContainerPort(), &expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseLLHeader, Offset: 12, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binary.BigEndian.AppendUint16(nil, unix.ETH_P_8021Q)}, drop),
		rule(fromContainerPort(), &expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseLLHeader, Offset: 12, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binary.BigEndian.AppendUint16(nil, unix.ETH_P_8021AD)}, drop),
		rule(fromContainerPort(), ethProto(unix.ETH_P_IPV6),
			matchPrefixAt(payloadAddr(true), linkLocal, expr.CmpOpNeq),
			payloadAddr(true), &expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: make([]byte, 16)},
			addrPort("port_src", payloadAddr(true)), drop),
		rule(fromContainerPort(), ethProto(unix.ETH_P_IP),
			addrPort("port_src4", payloadAddr4(true)), drop),
		rule(fromContainerPort(), ethProto(unix.ETH_P_ARP),
			arpSenderIP(), &expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: make([]byte, 4)},
			addrPort("port_src4", arpSenderIP()), drop),
		rule(fromContainerPort(), ethProto(unix.ETH_P_IPV6), icmpType(134, 134), drop),
		rule(fromContainerPort(), ethProto(unix.ETH_P_IPV6), icmpType(137, 138), drop),
		rule(fromContainerPort(), ethProto(unix.ETH_P_IPV6), l4proto(unix.IPPROTO_UDP),
			&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: port(547)}, drop),
		rule(fromContainerPort(), ethProto(unix.ETH_P_IPV6), icmpType(136, 136),
			matchPrefixAt(ndTarget, prefix, expr.CmpOpEq), addrPort("port_src", ndTarget), drop),
		rule(fromContainerPort(), ethProto(unix.ETH_P_IPV6), icmpType(135, 135),
			payloadAddr(true), &expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: make([]byte, 16)},
			matchPrefixAt(ndTarget, prefix, expr.CmpOpEq), addrPort("port_src", ndTarget), drop),
	}
}

// addrNextReg is the 32-bit register after an address of n bytes loaded
// into register 1 (NFT_REG32_00 = 8): the next field of a concatenation.
func addrNextReg(n uint32) uint32 { return 8 + n/4 }

// arpSenderIP loads the sender protocol address of an Ethernet/IPv4 ARP
// packet (offset 14 of the ARP header).
func arpSenderIP() *expr.Payload {
	return &expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: 14, Len: 4}
}

// bridgeFilterPriority is the bridge family's "filter" priority: before
// br_netfilter (NF_BR_PRI_BRNF, 0), which hands IPv6 frames to the inet
// hooks.
var bridgeFilterPriority = nftables.ChainPriorityRef(-200)

func nfproto(p byte) []expr.Any {
	return []expr.Any{&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{p}}}
}

// ifname matches the input (in) or output interface name.
func ifname(in bool, name string, op expr.CmpOp) []expr.Any {
	k := expr.MetaKeyOIFNAME
	if in {
		k = expr.MetaKeyIIFNAME
	}
	b := make([]byte, 16)
	copy(b, name)
	return []expr.Any{&expr.Meta{Key: k, Register: reg1}, &expr.Cmp{Op: op, Register: reg1, Data: b}}
}

func baseChains(prefix netip.Prefix, nodePorts []Rule, bridge string) []chainSpec {
	egress := append([]ruleSpec{rule(verdict(expr.VerdictJump, "spoof"))}, directionChain("eg")...)
	filter := append(alwaysAllowed(),
		// Multicast from a container reaches no co-tenant and leaves no
		// link (neighbour discovery passed above; MLD is link-local).
		rule(matchPrefixAt(payloadAddr(false), multicast, expr.CmpOpEq), &expr.Counter{}, verdict(expr.VerdictDrop, "")),
		rule(matchPrefix(true, prefix), verdict(expr.VerdictGoto, "egress")),
		rule(verdict(expr.VerdictGoto, "ingress")))
	// Chain "node": packets from a container to the node itself (any of
	// its addresses, the gateway's first), of either family and from any
	// of the container's addresses. Same start as "filter", the same
	// anti-spoofing as "egress" for each family, then the node services
	// open to every container; the rest counts as the container's egress
	// drop.
	node := append(alwaysAllowed(), linkProtocols()[1:]...)
	node = append(node,
		rule(nfproto(unix.NFPROTO_IPV6), matchPrefix(true, prefix), verdict(expr.VerdictJump, "spoof")),
		rule(nfproto(unix.NFPROTO_IPV4), verdict(expr.VerdictJump, "spoof4")))
	if bridge != "" {
		// From the bridge, an IPv6 source is the container's /80 address
		// or its link-local address; anything else is forged.
		node = append(node, rule(nfproto(unix.NFPROTO_IPV6),
			matchPrefixAt(payloadAddr(true), prefix, expr.CmpOpNeq),
			matchPrefixAt(payloadAddr(true), linkLocal, expr.CmpOpNeq),
			&expr.Counter{}, verdict(expr.VerdictDrop, "")))
	}
	node = append(node, nodePortRules(nodePorts)...)
	node = append(node,
		rule(nfproto(unix.NFPROTO_IPV6), payloadAddr(true), &expr.Lookup{SourceRegister: reg1, SetName: "eg_drop"}),
		rule(nfproto(unix.NFPROTO_IPV4), payloadAddr4(true), &expr.Lookup{SourceRegister: reg1, SetName: "eg4_drop"}),
		rule(verdict(expr.VerdictDrop, "")))
	ipv6 := nfproto(unix.NFPROTO_IPV6)
	forward := []ruleSpec{}
	input := []ruleSpec{
		rule(&expr.Meta{Key: expr.MetaKeyIIF, Register: reg1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binary.NativeEndian.AppendUint32(nil, loopbackIfindex)},
			verdict(expr.VerdictReturn, "")),
	}
	if bridge != "" {
		forward = append(forward,
			rule(ifname(true, bridge, expr.CmpOpEq), ipv6, matchPrefix(true, prefix), verdict(expr.VerdictGoto, "filter")),
			rule(ifname(true, bridge, expr.CmpOpEq), verdict(expr.VerdictGoto, "from_link")))
		input = append(input, rule(ifname(true, bridge, expr.CmpOpEq), verdict(expr.VerdictGoto, "node")))
	}
	forward = append(forward,
		rule(ipv6, matchPrefix(true, prefix), verdict(expr.VerdictGoto, "filter")),
		rule(ipv6, matchPrefix(false, prefix), verdict(expr.VerdictGoto, "filter")))
	if bridge != "" {
		forward = append(forward, rule(ifname(false, bridge, expr.CmpOpEq), verdict(expr.VerdictGoto, "to_link")))
	}
	input = append(input, rule(ipv6, matchPrefix(true, prefix), verdict(expr.VerdictGoto, "node")))
	chains := []chainSpec{
		{name: "forward", base: true, hook: nftables.ChainHookForward, rules: forward},
		// Traffic addressed to the node goes through input, not forward:
		// without this chain a container reaches every service of the
		// node (on the gateway address or any other). Only packets from the
		// bridge or from the prefix are looked at; the node's own traffic
		// to itself (over lo, possibly from the gateway address) returns
		// untouched.
		{name: "input", base: true, hook: nftables.ChainHookInput, rules: input},
		{name: "filter", rules: filter},
		{name: "spoof", rules: antiSpoofing()},
		{name: "spoof4", rules: antiSpoofing4()},
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
	if bridge != "" {
		// Everything else from the bridge: IPv4 goes to egress4; IPv6 from
		// a link-local address (or ::) carries neighbour discovery and MLD
		// and nothing else, so link-local unicast between containers, and
		// multicast, reach no co-tenant.
		fromLink := append([]ruleSpec{ctReplies(),
			rule(nfproto(unix.NFPROTO_IPV4), verdict(expr.VerdictGoto, "egress4"))},
			linkProtocols()...)
		fromLink = append(fromLink, rule(&expr.Counter{}, verdict(expr.VerdictDrop, "")))
		// IPv4 from a container: never to another container (the bridge),
		// else as its egress rules say (the node's NAT takes it from here).
		egress4 := append([]ruleSpec{
			rule(ifname(false, bridge, expr.CmpOpEq), &expr.Counter{}, verdict(expr.VerdictDrop, "")),
			rule(verdict(expr.VerdictJump, "spoof4")),
		}, directionChain("eg4")...)
		chains = append(chains,
			chainSpec{name: "from_link", rules: fromLink},
			chainSpec{name: "egress4", rules: egress4},
			// To the bridge and not IPv6 to the prefix: IPv4 from outside
			// (there is no IPv4 ingress) or anything routed there. Only
			// replies and their errors.
			chainSpec{name: "to_link", rules: []ruleSpec{ctReplies(), rule(&expr.Counter{}, verdict(expr.VerdictDrop, ""))}})
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
