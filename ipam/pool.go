package ipam

import (
	"encoding/binary"
	"fmt"
	"io"
	"net/netip"
	"time"
)

// Lease is an address handed to Docker for one endpoint.
type Lease struct {
	Addr    netip.Addr `json:"addr"`
	Pool    string     `json:"pool"`
	Granted time.Time  `json:"granted"`
	// Owner is a hint about who holds the address (a MAC address when
	// Docker sends one, or a container ID adopted by reconcile).
	Owner string `json:"owner,omitempty"`
	// Endpoint is the name of the Docker endpoint (the container's name)
	// when the engine sends it (Docker 29+): the identity that lets a
	// restarting container have its own address back from hold-down.
	Endpoint string `json:"endpoint,omitempty"`
}

// Hold is a released address in hold-down: it is not handed out again
// until Released+HoldDown.
type Hold struct {
	Addr     netip.Addr `json:"addr"`
	Pool     string     `json:"pool"`
	Released time.Time  `json:"released"`
	// Endpoint is the released lease's Endpoint: only that endpoint may
	// have the address back during hold-down.
	Endpoint string `json:"endpoint,omitempty"`
}

// randomTries bounds random probing before the deterministic scan. In a
// /80 a random probe practically never hits a used address, so this only
// matters for small or nearly full pools.
const randomTries = 32

// pool is the allocation state of one prefix. It is pure (clock and
// randomness are passed in) and not safe for concurrent use: Allocator
// serialises access and persists every change before applying it.
type pool struct {
	id       string
	prefix   netip.Prefix
	mask     uint64 // host bits set
	gateway  netip.Addr
	reserved map[netip.Addr]struct{}
	leases   map[netip.Addr]Lease
	holds    map[netip.Addr]Hold
	holdDown time.Duration
}

func newPool(prefix, gateway netip.Addr, bits int, reserved []netip.Addr, holdDown time.Duration) *pool {
	pfx := netip.PrefixFrom(prefix, bits).Masked()
	hostBits := pfx.Addr().BitLen() - bits
	p := &pool{
		id:       pfx.String(),
		prefix:   pfx,
		mask:     hostMask(hostBits),
		gateway:  gateway,
		reserved: map[netip.Addr]struct{}{},
		leases:   map[netip.Addr]Lease{},
		holds:    map[netip.Addr]Hold{},
		holdDown: holdDown,
	}
	// The subnet-router anycast address (IPv6) or network address (IPv4).
	p.reserved[pfx.Addr()] = struct{}{}
	if pfx.Addr().Is4() {
		p.reserved[lastAddr(pfx)] = struct{}{} // broadcast
	}
	if gateway.IsValid() {
		p.reserved[gateway] = struct{}{}
	}
	for _, r := range reserved {
		if pfx.Contains(r) {
			p.reserved[r] = struct{}{}
		}
	}
	return p
}

func hostMask(hostBits int) uint64 {
	if hostBits >= 64 {
		return ^uint64(0)
	}
	return uint64(1)<<hostBits - 1
}

// offsetAddr returns the address at host offset off inside p. Host parts
// are at most 64 bits (/64 is the shortest node prefix).
func offsetAddr(p netip.Prefix, off uint64) netip.Addr {
	a := p.Masked().Addr()
	if a.Is4() {
		b := a.As4()
		v := binary.BigEndian.Uint32(b[:]) | uint32(off)&uint32(hostMask(32-p.Bits())) //nolint:gosec // G115: the mask keeps only the host bits, truncation is the point
		binary.BigEndian.PutUint32(b[:], v)
		return netip.AddrFrom4(b)
	}
	b := a.As16()
	v := binary.BigEndian.Uint64(b[8:]) | off&hostMask(128-p.Bits())
	binary.BigEndian.PutUint64(b[8:], v)
	return netip.AddrFrom16(b)
}

func lastAddr(p netip.Prefix) netip.Addr { return offsetAddr(p, ^uint64(0)) }

func (p *pool) contains(a netip.Addr) bool { return p.prefix.Contains(a) }

func (p *pool) size() float64 { return float64(p.mask) + 1 }

func (p *pool) heldAt(a netip.Addr, now time.Time) (Hold, bool) {
	h, ok := p.holds[a]
	if !ok || !now.Before(h.Released.Add(p.holdDown)) {
		return Hold{}, false
	}
	return h, true
}

// heldFor returns the most recent hold released by endpoint, in hold-down
// or past it but not yet pruned or leased again.
func (p *pool) heldFor(endpoint string) (Hold, bool) {
	var best Hold
	found := false
	for _, h := range p.holds {
		if h.Endpoint == endpoint && (!found || h.Released.After(best.Released)) {
			best, found = h, true
		}
	}
	return best, found
}

func (p *pool) isFree(a netip.Addr, now time.Time) bool {
	if _, ok := p.reserved[a]; ok {
		return false
	}
	if _, ok := p.leases[a]; ok {
		return false
	}
	_, held := p.heldAt(a, now)
	return !held
}

func randomOffset(rnd io.Reader, mask uint64) (uint64, error) {
	var b [8]byte
	if _, err := io.ReadFull(rnd, b[:]); err != nil {
		return 0, fmt.Errorf("random source: %w", err)
	}
	return binary.BigEndian.Uint64(b[:]) & mask, nil
}

// pick chooses a free address: random probes first (unpredictable, and
// O(1) while the pool is sparse), then a scan from a random start that is
// bounded by the number of used addresses, so a full pool is reported
// instead of looping.
func (p *pool) pick(now time.Time, rnd io.Reader) (netip.Addr, error) {
	for range randomTries {
		off, err := randomOffset(rnd, p.mask)
		if err != nil {
			return netip.Addr{}, err
		}
		if a := offsetAddr(p.prefix, off); p.isFree(a, now) {
			return a, nil
		}
	}
	// Among used+1 distinct addresses at least one is free (pigeonhole),
	// so scanning that many finds one unless the pool is smaller.
	used := uint64(len(p.reserved) + len(p.leases) + len(p.holds))
	n := used + 1
	if p.mask < used { // pool size (mask+1) <= used: scan everything once
		n = p.mask + 1
	}
	start, err := randomOffset(rnd, p.mask)
	if err != nil {
		return netip.Addr{}, err
	}
	for i := uint64(0); i < n; i++ {
		if a := offsetAddr(p.prefix, (start+i)&p.mask); p.isFree(a, now) {
			return a, nil
		}
	}
	return netip.Addr{}, p.exhausted(now)
}

// ExhaustedError says a pool has no address to give.
type ExhaustedError struct {
	Pool     string
	Size     float64
	Leased   int
	HeldDown int
	Reserved int
	HoldDown time.Duration
}

func (e *ExhaustedError) Error() string {
	return fmt.Sprintf("ipam pool %s is exhausted: %d of %.0f addresses leased, %d in hold-down, %d reserved; "+
		"remove unused containers, wait for hold-down (%s) to expire or shorten it, or configure a larger prefix",
		e.Pool, e.Leased, e.Size, e.HeldDown, e.Reserved, e.HoldDown)
}

func (p *pool) exhausted(now time.Time) error {
	held := 0
	for a := range p.holds {
		if _, ok := p.heldAt(a, now); ok {
			held++
		}
	}
	return &ExhaustedError{Pool: p.id, Size: p.size(), Leased: len(p.leases), HeldDown: held, Reserved: len(p.reserved), HoldDown: p.holdDown}
}

// checkSpecific decides whether Docker may have addr. reclaim is true when
// addr is already leased: Docker is the pool's only client, so a request for
// a leased address is Docker re-claiming its own (daemon restart).
func (p *pool) checkSpecific(a netip.Addr, now time.Time) (reclaim bool, err error) {
	if !p.contains(a) {
		return false, fmt.Errorf("address %s is outside pool %s: request an address inside it or none", a, p.id)
	}
	if _, ok := p.leases[a]; ok {
		return true, nil
	}
	if _, ok := p.reserved[a]; ok {
		return false, fmt.Errorf("address %s of pool %s is reserved (subnet-router, gateway, broadcast or operator-listed): request another address or none", a, p.id)
	}
	if h, ok := p.heldAt(a, now); ok {
		until := h.Released.Add(p.holdDown)
		return false, fmt.Errorf("address %s of pool %s was released at %s and is in hold-down until %s (%s left), so stale caches do not reach a new container: request another address or none",
			a, p.id, h.Released.UTC().Format(time.RFC3339), until.UTC().Format(time.RFC3339), until.Sub(now).Round(time.Second))
	}
	return false, nil
}
