// Package netns is the one test helper for network namespaces: create a
// named namespace that is removed in t.Cleanup, run code inside it with the
// OS thread locked, and wire veths, bridges, addresses and routes through
// vishvananda/netlink. Tests that need root call RequireRoot first.
//
// Namespaces are bind-mounted under /run/netns, so `ip netns exec NAME ...`
// works for debugging and for read-only CLI checks (nft list ...).
package netns

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// RequireRoot skips the test when not running as root: namespaces, veths
// and nftables need CAP_SYS_ADMIN and CAP_NET_ADMIN.
func RequireRoot(t T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, veths and nftables tables")
	}
}

// T is what New needs of its caller: *testing.T and *testing.B satisfy it,
// and so does the demo's runner, which is not a test.
type T interface {
	Helper()
	Cleanup(func())
	Fatalf(format string, args ...any)
	Skip(args ...any)
}

var seq atomic.Uint32

// NS is a named network namespace owned by a test.
type NS struct {
	Name   string
	handle netns.NsHandle
	nl     *netlink.Handle

	// mu guards handle against close: a Run still in flight when the test
	// ends (an HTTP dial to a dropped address outlives its request) must
	// see a closed namespace, not a closed or reused fd.
	mu     sync.RWMutex
	closed bool
}

// New creates a network namespace whose name is unique to this process
// (name, pid and a counter) and deletes it in t.Cleanup, even on failure.
// Loopback is brought up.
func New(t T, name string) *NS {
	t.Helper()
	RequireRoot(t)
	full := fmt.Sprintf("v6t-%s-%d-%d", name, os.Getpid(), seq.Add(1))
	if len(full) > 60 {
		full = full[:60]
	}
	h, err := newNamed(full)
	if err != nil {
		t.Fatalf("create netns %s: %v", full, err)
	}
	ns := &NS{Name: full, handle: h}
	t.Cleanup(func() { ns.close() })
	ns.nl, err = netlink.NewHandleAt(h)
	if err != nil {
		t.Fatalf("netlink handle in %s: %v", full, err)
	}
	lo, err := ns.nl.LinkByName("lo")
	if err != nil {
		t.Fatalf("lo in %s: %v", full, err)
	}
	if err := ns.nl.LinkSetUp(lo); err != nil {
		t.Fatalf("lo up in %s: %v", full, err)
	}
	// No duplicate address detection: link-local addresses would stay
	// tentative for a second or two and make the first probes flaky.
	for _, k := range []string{"net.ipv6.conf.default.accept_dad", "net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.dad_transmits"} {
		if err := ns.Sysctl(k, "0"); err != nil {
			t.Fatalf("netns %s: %v", full, err)
		}
	}
	return ns
}

// newNamed creates the namespace on a locked thread and returns to the
// original namespace, so no other goroutine ever runs inside it by accident.
func newNamed(name string) (netns.NsHandle, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return 0, fmt.Errorf("current netns: %w", err)
	}
	defer func() { _ = orig.Close() }() // a read-only handle
	h, err := netns.NewNamed(name)
	if err != nil {
		return 0, fmt.Errorf("new netns: %w", err)
	}
	if err := netns.Set(orig); err != nil {
		// The thread is stuck in the new namespace; keep it locked so the
		// runtime discards it instead of reusing it.
		runtime.LockOSThread()
		return 0, fmt.Errorf("return to original netns: %w", err)
	}
	return h, nil
}

func (ns *NS) close() {
	ns.mu.Lock()
	defer ns.mu.Unlock()
	ns.closed = true
	if ns.nl != nil {
		ns.nl.Close()
	}
	_ = ns.handle.Close() // teardown is best effort, like DeleteNamed
	_ = netns.DeleteNamed(ns.Name)
}

// enter switches the calling (locked) thread into the namespace.
func (ns *NS) enter() error {
	ns.mu.RLock()
	defer ns.mu.RUnlock()
	if ns.closed {
		return fmt.Errorf("netns %s: already removed", ns.Name)
	}
	return netns.Set(ns.handle)
}

// Fd is the namespace's file descriptor, e.g. for nftables.WithNetNSFd.
// It stays valid until the test ends.
func (ns *NS) Fd() int { return int(ns.handle) }

// Handle is a netlink handle bound to the namespace.
func (ns *NS) Handle() *netlink.Handle { return ns.nl }

// Run executes f on an OS thread locked into the namespace. Goroutines that
// f starts do not inherit the namespace; sockets created by f stay in it.
func (ns *NS) Run(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		// A fresh goroutine: if switching back fails, the thread stays
		// locked and exits with the goroutine, so it is never reused.
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("current netns: %w", err)
			return
		}
		defer func() { _ = orig.Close() }() // a read-only handle
		if err := ns.enter(); err != nil {
			errc <- fmt.Errorf("enter netns %s: %w", ns.Name, err)
			return
		}
		ferr := f()
		if err := netns.Set(orig); err != nil {
			errc <- fmt.Errorf("leave netns %s: %w (f: %v)", ns.Name, err, ferr)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Sysctl writes /proc/sys/<key> (dots or slashes) inside the namespace.
func (ns *NS) Sysctl(key, value string) error {
	p := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
	return ns.Run(func() error {
		if err := os.WriteFile(p, []byte(value), 0o644); err != nil {
			return fmt.Errorf("sysctl %s: %w", key, err)
		}
		return nil
	})
}

// Veth creates a veth pair with one end (name) in ns and the other (peerName)
// in peer, both up. Names must be unique only within their namespace.
func (ns *NS) Veth(name string, peer *NS, peerName string) error {
	v := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: name},
		PeerName:      peerName,
		PeerNamespace: netlink.NsFd(peer.handle),
	}
	if err := ns.nl.LinkAdd(v); err != nil {
		return fmt.Errorf("veth %s/%s: %w", name, peerName, err)
	}
	if err := ns.Up(name); err != nil {
		return err
	}
	return peer.Up(peerName)
}

// Up sets a link up.
func (ns *NS) Up(name string) error {
	l, err := ns.nl.LinkByName(name)
	if err != nil {
		return fmt.Errorf("link %s in %s: %w", name, ns.Name, err)
	}
	if err := ns.nl.LinkSetUp(l); err != nil {
		return fmt.Errorf("link %s up: %w", name, err)
	}
	return nil
}

// Bridge creates an up bridge.
func (ns *NS) Bridge(name string) error {
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
	if err := ns.nl.LinkAdd(br); err != nil {
		return fmt.Errorf("bridge %s: %w", name, err)
	}
	return ns.Up(name)
}

// SetMaster attaches link to bridge.
func (ns *NS) SetMaster(link, bridge string) error {
	l, err := ns.nl.LinkByName(link)
	if err != nil {
		return fmt.Errorf("link %s: %w", link, err)
	}
	b, err := ns.nl.LinkByName(bridge)
	if err != nil {
		return fmt.Errorf("bridge %s: %w", bridge, err)
	}
	if err := ns.nl.LinkSetMaster(l, b); err != nil {
		return fmt.Errorf("attach %s to %s: %w", link, bridge, err)
	}
	return nil
}

// SetMTU sets a link's MTU.
func (ns *NS) SetMTU(link string, mtu int) error {
	l, err := ns.nl.LinkByName(link)
	if err != nil {
		return fmt.Errorf("link %s: %w", link, err)
	}
	return ns.nl.LinkSetMTU(l, mtu)
}

// Addr adds an address (without duplicate address detection, so it is
// usable at once).
func (ns *NS) Addr(link string, p netip.Prefix) error {
	l, err := ns.nl.LinkByName(link)
	if err != nil {
		return fmt.Errorf("link %s: %w", link, err)
	}
	a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}, Flags: unix.IFA_F_NODAD}
	if err := ns.nl.AddrAdd(l, a); err != nil {
		return fmt.Errorf("address %s on %s: %w", p, link, err)
	}
	return nil
}

// Route adds a route to dst via gw (gw may be invalid for an on-link route
// through link).
func (ns *NS) Route(dst netip.Prefix, gw netip.Addr, link string) error {
	r := &netlink.Route{Dst: &net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(dst.Bits(), dst.Addr().BitLen())}}
	if gw.IsValid() {
		r.Gw = gw.AsSlice()
	}
	if link != "" {
		l, err := ns.nl.LinkByName(link)
		if err != nil {
			return fmt.Errorf("link %s: %w", link, err)
		}
		r.LinkIndex = l.Attrs().Index
	}
	if err := ns.nl.RouteAdd(r); err != nil {
		return fmt.Errorf("route %s via %s: %w", dst, gw, err)
	}
	return nil
}
