package firewall

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/google/nftables"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Firewall owns the tables `inet v6reg` and `bridge v6reg` in one network
// namespace.
type Firewall struct {
	conn *nftables.Conn
	nsfd int // the namespace's fd (0: the current one), for conntrack

	// Revocation (revoke.go): addresses waiting for their flows to be
	// judged, and whether the goroutine that does it runs.
	revokeMu      sync.Mutex
	revokePending map[netip.Addr]bool
	revoking      bool
	noRevoke      bool // benchmarks of the table alone

	log   *slog.Logger
	gen   interface{ read() (uint32, error) } // a *genReader but in tests
	elems []*elemReader                       // none: read elements through conn only

	mu sync.Mutex
	// m is the newest valid state given to Apply or ApplyDelta, compiled:
	// what the table must hold, and what Watch repairs to (nil before
	// the first valid Apply). Read and written only under mu, so a repair
	// can never apply a state older than the last Apply (issue 16).
	m *model
	// live says that the table held m.want right after our commit that
	// left the ruleset generation at liveGen: if the generation is still
	// liveGen, nobody touched any table since, and a change's plan is
	// computed from the model alone.
	live    bool
	liveGen uint32
	// judgeAll: the next commit revokes every container's flows, not only
	// the changed ones' (a new Firewall, or one whose table was unknown
	// after an error: a change may have gone unrevoked).
	judgeAll bool
	comp     *compiler

	everApplied bool

	restores atomic.Uint64
}

// Changes summarizes what one Apply sent.
type Changes struct {
	ElemsAdded, ElemsRemoved                    int
	ChainsAdded, ChainsRemoved, ChainsRewritten int // rewritten: repaired after an outside edit
	ChainsUpdated                               int // rewritten because the State changed them (NodePorts)
	SetsAdded, SetsRemoved                      int
	TableCreated                                bool // table inet v6reg
	BridgeTableCreated                          bool // table bridge v6reg
	Batches                                     int  // netlink batches sent; 1 unless the change was chunked
}

// Empty reports whether nothing was sent.
func (c Changes) Empty() bool { return c.Batches == 0 }

// Restored reports whether the change repaired a missing table or a
// rewritten base chain.
func (c Changes) Restored() bool {
	return c.TableCreated || c.BridgeTableCreated || c.ChainsRewritten > 0
}

// New returns a Firewall programming through conn. Pass a conn created with
// nftables.WithNetNSFd(fd) to work in another namespace, and the same fd as
// nsfd (0 for the current namespace) so the generation check reads the same
// namespace.
func New(conn *nftables.Conn, nsfd int, log *slog.Logger) *Firewall {
	return &Firewall{conn: conn, log: log, gen: &genReader{nsfd: nsfd}, nsfd: nsfd,
		elems: []*elemReader{{nsfd: nsfd}, {nsfd: nsfd}}}
}

// Restores counts the Applies that found the table missing or a chain's
// rules edited, and repaired it.
func (f *Firewall) Restores() uint64 { return f.restores.Load() }

var (
	table       = &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName}
	bridgeTable = &nftables.Table{Family: nftables.TableFamilyBridge, Name: TableName}
)

// Apply makes the table hold exactly what s describes.
//
// It keeps what it committed last, per container and peer set. When the
// ruleset generation shows that nobody committed to nftables since, the
// table is known without reading it, and only the containers and peer sets
// that differ from the last Apply are validated, compiled and sent: the
// cost of a change is proportional to the change, plus one comparison per
// container. Otherwise (first Apply, someone else's commit, an earlier
// error) it validates everything, reads the table and diffs it whole.
//
// The difference is sent as one netlink batch (it spans both tables), so a
// container's change is atomic. The tables are created when missing and
// never deleted or flushed.
// A change larger than one netlink message can carry (a first apply of
// thousands of containers) is sent as several batches in this order: new
// sets and chains, element removals, element additions, rewritten chains,
// removal of unused chains and sets. Each batch is atomic; between batches
// a container may be partly programmed, which can only deny more than the
// target state, never allow more than the union of old and new.
//
// Applying the same State again sends nothing. A valid s becomes the
// state Watch repairs to (even if sending it failed, so the repair retries
// the newest state) and the state the next ApplyDelta changes. Apply
// copies what it keeps of s.
//
// A caller that knows which containers or peer sets changed uses
// ApplyDelta instead, whose cost does not grow with the number of
// containers; Apply stays the full resync.
func (f *Firewall) Apply(ctx context.Context, s State) (Changes, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.apply(ctx, s)
}

// repair makes the table hold the newest valid state given to Apply or
// ApplyDelta again, under the same lock, so it is never older than what
// they last took. When the generation shows nobody committed since our
// last commit, it costs one netlink round trip.
func (f *Firewall) repair(ctx context.Context) (Changes, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.m == nil {
		return Changes{}, nil
	}
	if err := ctx.Err(); err != nil {
		return Changes{}, err
	}
	g0, gerr := f.gen.read()
	if f.live && gerr == nil && g0 == f.liveGen {
		return Changes{}, nil
	}
	return f.full(nil, g0, gerr, nil, nil)
}

// apply is Apply with f.mu held.
func (f *Firewall) apply(ctx context.Context, s State) (Changes, error) {
	if err := ctx.Err(); err != nil {
		return Changes{}, err
	}
	if f.comp == nil {
		f.comp = newCompiler()
	}
	g0, gerr := f.gen.read()
	known := f.live && gerr == nil && g0 == f.liveGen
	if f.m != nil {
		// The model turns into s, comparing each container with its last
		// version; the plan is needed only if the table is known.
		if p, ok := f.m.update(s, f.comp, nil, known); ok {
			if known {
				return f.commit(p, g0, gerr, true, nil)
			}
			return f.full(nil, g0, gerr, p.revoke, nil)
		}
	}
	// A new model: the first Apply, a change of the prefix, gateway,
	// bridge or node ports, or an s that update refused (invalid, or an
	// address moving between containers).
	if err := s.Validate(); err != nil {
		return Changes{}, err // the model is untouched
	}
	prev := f.m
	var reuse map[string]*compiled
	if prev != nil {
		reuse = prev.conts
	}
	m := newModel(s)
	if _, ok := m.update(s, f.comp, reuse, false); !ok {
		return Changes{}, fmt.Errorf("firewall state: accepted by Validate but not by the model (a bug)")
	}
	f.m = m
	var live *liveState
	if known && prev != nil && prev.prefix == s.Prefix && prev.gateway == s.Gateway {
		live = &liveState{content: prev.want, present: true, bridgePresent: true}
	}
	return f.full(live, g0, gerr, affectedBy(prev, m), prev)
}

// full makes the table hold f.m.want by a diff against live (read when
// nil). revoke are the addresses the model change took something from;
// prev is the model before a new one was built (nil: f.m was updated in
// place), to tell a chain rewritten by a State change from a repair.
func (f *Firewall) full(live *liveState, g0 uint32, gerr error, revoke map[netip.Addr]bool, prev *model) (Changes, error) {
	f.live = false // until the table is known to match
	if live == nil {
		var err error
		if live, err = f.readLive(f.m.want); err != nil {
			f.judgeAll = true
			return Changes{}, err
		}
	}
	p := diff(live, f.m.want)
	if f.judgeAll {
		revoke = affectedBy(nil, f.m)
	}
	p.revoke = revoke
	return f.commit(p, g0, gerr, false, prev)
}

// commit sends p, which turns the table (as of generation g0) into
// f.m.want, and records what the table now holds.
func (f *Firewall) commit(p plan, g0 uint32, gerr error, incremental bool, prev *model) (Changes, error) {
	ch := p.changes()
	if prev != nil {
		// A chain our own last commit had with other rules is an update
		// (State.NodePorts changed), not a repair of an outside edit.
		for _, cs := range p.rewriteChains {
			if old, ok := prev.want.chains[cs.name]; ok && old.tag != cs.tag {
				ch.ChainsRewritten--
				ch.ChainsUpdated++
			}
		}
	}
	if p.empty() {
		if !incremental {
			f.liveGen = g0
			f.live = gerr == nil
			f.judgeAll = gerr != nil
		}
		return ch, nil
	}
	batches, err := f.send(p)
	ch.Batches = batches
	if err != nil {
		f.live, f.judgeAll = false, true // unknown: re-read next time
		return ch, fmt.Errorf("nftables batch for tables inet and bridge %s: %w", TableName, err)
	}
	g1, gerr1 := f.gen.read()
	f.liveGen = g1
	f.live, f.judgeAll = true, false
	if gerr != nil || gerr1 != nil || int64(g1-g0) != int64(batches) { // uint32 subtraction: the generation wraps
		f.live, f.judgeAll = false, true // someone else committed meanwhile: trust nothing cached
	}
	if ch.Restored() && f.everApplied {
		f.restores.Add(1)
		f.log.Warn("firewall table restored after an outside change", "table", "inet "+TableName,
			"table_created", ch.TableCreated, "bridge_table_created", ch.BridgeTableCreated, "chains_rewritten", ch.ChainsRewritten)
	}
	f.everApplied = true
	if !f.noRevoke {
		f.revokeLater(p.revoke)
	}
	f.log.Info("firewall applied", "table", "inet "+TableName,
		"elems_added", ch.ElemsAdded, "elems_removed", ch.ElemsRemoved,
		"chains_added", ch.ChainsAdded, "chains_removed", ch.ChainsRemoved,
		"chains_rewritten", ch.ChainsRewritten, "chains_updated", ch.ChainsUpdated, "table_created", ch.TableCreated,
		"bridge_table_created", ch.BridgeTableCreated, "batches", batches)
	return ch, nil
}

// liveState is the tables as read, plus whether each exists.
type liveState struct {
	content
	present       bool // table inet v6reg
	bridgePresent bool // table bridge v6reg
	// sameElems are the sets found to hold exactly the wanted elements;
	// their elements are not in content.elems.
	sameElems map[string]bool
}

// readLive reads both tables as far as a diff against want needs: the
// elements of a set that holds exactly want's are compared where they are
// read and not kept, those of a set want does not have are not read (it
// is deleted whole).
func (f *Firewall) readLive(want content) (*liveState, error) {
	ls := &liveState{content: content{sets: map[string]setSpec{}, elems: map[string]map[string]elem{}, chains: map[string]chainSpec{}},
		sameElems: map[string]bool{}}
	var err error
	if ls.present, err = f.readLiveTable(ls, table, "", want); err != nil {
		return nil, err
	}
	if ls.bridgePresent, err = f.readLiveTable(ls, bridgeTable, bridgeQual, want); err != nil {
		return nil, err
	}
	return ls, nil
}

// readLiveTable reads one of our tables into ls, its names prefixed with
// qual, and reports whether it exists.
func (f *Firewall) readLiveTable(ls *liveState, table *nftables.Table, qual string, want content) (bool, error) {
	fam := "inet"
	if table.Family == nftables.TableFamilyBridge {
		fam = "bridge"
	}
	tables, err := f.conn.ListTablesOfFamily(table.Family)
	if err != nil {
		return false, fmt.Errorf("list nftables tables of family %s: %w", fam, err)
	}
	if !slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == TableName }) {
		return false, nil
	}
	sets, err := f.conn.GetSets(table)
	if err != nil {
		return false, fmt.Errorf("list sets of %s %s: %w", fam, TableName, err)
	}
	same := f.sameSets(sets, qual, want)
	for _, s := range sets {
		name := qual + s.Name
		ls.sets[name] = setSpec{name: name}
		if _, ok := want.sets[name]; !ok {
			continue // deleted whole, elements and all
		}
		if same[name] {
			ls.sameElems[name] = true
			continue
		}
		elems, err := f.conn.GetSetElements(s)
		if err != nil {
			return false, fmt.Errorf("list elements of set %s %s %s: %w", fam, TableName, s.Name, err)
		}
		m := make(map[string]elem, len(elems))
		for _, e := range elems {
			le := elem{key: e.Key, keyEnd: e.KeyEnd, end: e.IntervalEnd, comment: e.Comment}
			if s.IsMap {
				le.data = e.Val
			}
			m[le.id()] = le
		}
		ls.elems[name] = m
	}
	chains, err := f.conn.ListChainsOfTableFamily(table.Family)
	if err != nil {
		return false, fmt.Errorf("list chains of family %s: %w", fam, err)
	}
	for _, c := range chains {
		if c.Table.Name != TableName {
			continue
		}
		rules, err := f.conn.GetRules(table, c)
		if err != nil {
			return false, fmt.Errorf("list rules of chain %s %s %s: %w", fam, TableName, c.Name, err)
		}
		cs := chainSpec{name: qual + c.Name, base: c.Hooknum != nil, rules: make([]ruleSpec, len(rules))}
		// The chain's tag is only trusted if every rule carries it.
		for i, r := range rules {
			t, _ := userdata.GetString(r.UserData, udataRuleComment)
			if i == 0 {
				cs.tag = t
			} else if t != cs.tag {
				cs.tag = "mixed"
			}
		}
		ls.chains[cs.name] = cs
	}
	return true, nil
}

// sameSets compares the elements of the sets of one table (names
// prefixed with qual) that want has with want's, len(f.elems) sets at a
// time: the kernel fills each dump in the reader's thread, so two readers
// use two cores when they are free. A set missing from the result differs
// or could not be read fast.
func (f *Firewall) sameSets(sets []*nftables.Set, qual string, want content) map[string]bool {
	out := map[string]bool{}
	if len(f.elems) == 0 {
		return out
	}
	// The largest first, so the two readers finish together.
	sets = slices.Clone(sets)
	slices.SortStableFunc(sets, func(a, b *nftables.Set) int {
		return len(want.elems[qual+b.Name]) - len(want.elems[qual+a.Name])
	})
	var mu sync.Mutex
	var next atomic.Int32
	var wg sync.WaitGroup
	for _, r := range f.elems {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= len(sets) {
					return
				}
				s := sets[i]
				name := qual + s.Name
				w, ok := want.elems[name]
				if !ok {
					continue
				}
				same, err := r.sameElems(s, w)
				if err != nil {
					f.log.Debug("firewall: fast read of set elements failed; reading them through the nftables conn", "set", name, "err", err)
				}
				if same {
					mu.Lock()
					out[name] = true
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	return out
}

// genReader reads the nftables ruleset generation id, which the kernel
// bumps on every committed batch in the namespace.
// The socket is kept: dialing into another namespace costs a setns.
type genReader struct {
	nsfd int
	c    *netlink.Conn
}

func (g *genReader) read() (uint32, error) {
	if g.c == nil {
		c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: g.nsfd})
		if err != nil {
			return 0, fmt.Errorf("netlink dial for nftables generation: %w", err)
		}
		g.c = c
	}
	c := g.c
	req := netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETGEN),
			Flags: netlink.Request,
		},
		Data: []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0},
	}
	msgs, err := c.Execute(req)
	if err != nil {
		_ = c.Close()
		g.c = nil
		return 0, fmt.Errorf("nftables generation: %w", err)
	}
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return 0, fmt.Errorf("nftables generation: %w", err)
		}
		ad.ByteOrder = binary.BigEndian
		for ad.Next() {
			if ad.Type() == unix.NFTA_GEN_ID {
				return ad.Uint32(), nil
			}
		}
	}
	return 0, errors.New("nftables generation: no NFTA_GEN_ID in reply")
}

// Bridge netfilter sysctls: with them, bridged frames between two ports
// of a bridge (container to container) cross the inet hooks, IPv6 and
// IPv4, and obey the same policy as routed traffic.
var bridgeNetfilterSysctls = []string{
	"/proc/sys/net/bridge/bridge-nf-call-ip6tables",
	"/proc/sys/net/bridge/bridge-nf-call-iptables",
}

// ErrNoBridgeNetfilter says the br_netfilter module is not loaded (or the
// kernel lacks it): containers on one bridge reach each other past every
// rule of the inet table.
var ErrNoBridgeNetfilter = errors.New("br_netfilter is not loaded, so traffic between containers on the bridge bypasses the firewall: load it (modprobe br_netfilter) and at boot (the v6reg RPM lists it in /usr/lib/modules-load.d/v6reg.conf)")

// EnableBridgeNetfilter makes bridged traffic cross the inet hooks in the
// calling thread's network namespace: it turns on
// net.bridge.bridge-nf-call-ip6tables and -iptables where they are off
// (someone turned them off, or Docker 27+, which loads br_netfilter only
// for icc=false networks and sets nothing else). It is a /proc/sys write,
// not a command. fixed lists the sysctls it had to turn back on; the
// error wraps ErrNoBridgeNetfilter when the module is missing. Call it at
// start and on every repair: a change behind the agent's back opens every
// container to its co-tenants until it runs again. Note that it also makes
// other ip6tables/iptables forward rules (Docker's) see bridged traffic.
func EnableBridgeNetfilter() (fixed []string, err error) {
	for _, p := range bridgeNetfilterSysctls {
		b, err := os.ReadFile(p) //nolint:gosec // G304: p is one of the fixed sysctl paths above
		if errors.Is(err, os.ErrNotExist) {
			return fixed, fmt.Errorf("%s missing: %w", p, ErrNoBridgeNetfilter)
		}
		if err != nil {
			return fixed, fmt.Errorf("bridge netfilter sysctl: %w", err)
		}
		if len(b) > 0 && b[0] == '1' {
			continue
		}
		if err := os.WriteFile(p, []byte("1"), 0o644); err != nil {
			return fixed, fmt.Errorf("enable bridge netfilter (%s): %w", p, err)
		}
		fixed = append(fixed, p)
	}
	return fixed, nil
}
