package firewall

import (
	"errors"
	"fmt"
	"net/netip"
	"os"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// PortFinder finds the bridge port of a container, the Container.Port of
// its State: the host side of the veth whose peer is the container's
// interface. It never enters the container's namespace (no setns, so no
// CAP_SYS_ADMIN): it opens the namespace's file (Docker's SandboxKey),
// asks the kernel which id that namespace has as seen from the
// Firewall's namespace (RTM_GETNSID), and picks the port of the bridge
// whose link-netnsid is that id.
type PortFinder struct {
	h       *netlink.Handle // in the namespace of the bridge (the node's)
	gateway netip.Addr
}

// NewPortFinder returns a PortFinder working through h, a netlink handle
// in the namespace the Firewall programs. The bridge is the link that
// holds gateway (the State's Gateway): Docker puts the network's gateway
// address on its bridge, whatever the bridge is called.
func NewPortFinder(h *netlink.Handle, gateway netip.Addr) *PortFinder {
	return &PortFinder{h: h, gateway: gateway}
}

// ErrNoPort is wrapped by the errors of Ports for a namespace that has no
// port on the bridge.
var ErrNoPort = errors.New("no port of the bridge leads into the namespace")

// Ports returns, for each network namespace file in netns (e.g.
// /var/run/docker/netns/1a2b3c4d5e6f), the ifindex of its port on the
// bridge, or an error for that namespace (ports[i] is then 0). It lists
// the node's links and addresses once, whatever the number of
// namespaces.
func (f *PortFinder) Ports(netns []string) (ports []int, errs []error) {
	ports, errs = make([]int, len(netns)), make([]error, len(netns))
	fail := func(err error) ([]int, []error) {
		for i := range errs {
			errs[i] = err
		}
		return ports, errs
	}
	// Links first: dumping a veth whose peer is in another namespace
	// makes the kernel assign that namespace an id here, if it had none.
	links, err := f.h.LinkList()
	if err != nil {
		return fail(fmt.Errorf("list links: %w", err))
	}
	bridge, err := f.bridge()
	if err != nil {
		return fail(err)
	}
	byNSID := map[int][]int{}
	for _, l := range links {
		a := l.Attrs()
		if a.MasterIndex == bridge && a.NetNsID >= 0 && l.Type() == "veth" {
			byNSID[a.NetNsID] = append(byNSID[a.NetNsID], a.Index)
		}
	}
	for i, path := range netns {
		nsid, err := f.nsid(path)
		if err != nil {
			errs[i] = err
			continue
		}
		switch p := byNSID[nsid]; len(p) {
		case 0:
			errs[i] = fmt.Errorf("network namespace %s (nsid %d): %w (bridge ifindex %d)", path, nsid, ErrNoPort, bridge)
		case 1:
			ports[i] = p[0]
		default:
			errs[i] = fmt.Errorf("network namespace %s (nsid %d): %d ports of the bridge (ifindex %d) lead into it, want one", path, nsid, len(p), bridge)
		}
	}
	return ports, errs
}

// bridge is the ifindex of the link that holds the gateway address.
func (f *PortFinder) bridge() (int, error) {
	addrs, err := f.h.AddrList(nil, netlink.FAMILY_V6)
	if err != nil {
		return 0, fmt.Errorf("list IPv6 addresses: %w", err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == f.gateway {
			return a.LinkIndex, nil
		}
	}
	return 0, fmt.Errorf("no link holds the gateway address %s: is the Docker network's bridge up?", f.gateway)
}

// nsid is the id of the namespace at path as seen from f's namespace.
func (f *PortFinder) nsid(path string) (int, error) {
	file, err := os.Open(path) //nolint:gosec // G304: the path is Docker's SandboxKey, a namespace file
	if err != nil {
		return 0, fmt.Errorf("open network namespace: %w", err)
	}
	// Opened read-only: a failed close loses nothing.
	defer func() { _ = file.Close() }()
	id, err := f.h.GetNetNsIdByFd(int(file.Fd())) //nolint:gosec // G115: a file descriptor fits an int
	if err != nil {
		if errors.Is(err, unix.EINVAL) {
			return 0, fmt.Errorf("network namespace %s: not a namespace file (is it mounted in the agent's mount namespace?): %w", path, err)
		}
		return 0, fmt.Errorf("network namespace %s: id: %w", path, err)
	}
	if id < 0 {
		return 0, fmt.Errorf("network namespace %s: has no id in the bridge's namespace: %w", path, ErrNoPort)
	}
	return id, nil
}
