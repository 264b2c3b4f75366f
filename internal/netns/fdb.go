package netns

import (
	"bytes"
	"fmt"
	"net"
	"sync"

	"github.com/v6reg/v6reg/internal/ethframe"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// SendFrame writes one raw Ethernet frame (header included) out of link
// ifindex of ns through an AF_PACKET socket: what a process with NET_RAW
// can do, any source MAC included.
func (ns *NS) SendFrame(ifindex int, frame []byte) error {
	if len(frame) < 14 {
		return fmt.Errorf("frame of %d bytes: shorter than an Ethernet header", len(frame))
	}
	return ns.Run(func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		defer func() { _ = unix.Close(fd) }() // nothing buffered to lose
		to := &unix.SockaddrLinklayer{Ifindex: ifindex, Halen: 6,
			Protocol: ethframe.Htons(uint16(frame[12])<<8 | uint16(frame[13]))}
		copy(to.Addr[:], frame[0:6])
		if err := unix.Sendto(fd, frame, 0, to); err != nil {
			return fmt.Errorf("raw frame from %s out of link %d in %s: %w", net.HardwareAddr(frame[6:12]), ifindex, ns.Name, err)
		}
		return nil
	})
}

// FDBPort is the bridge port (ifindex) that a bridge of ns forwards mac
// to, 0 if none has learned it.
func (ns *NS) FDBPort(mac net.HardwareAddr) (int, error) {
	fdb, err := ns.nl.NeighList(0, unix.AF_BRIDGE)
	if err != nil {
		return 0, fmt.Errorf("bridge forwarding table in %s: %w", ns.Name, err)
	}
	for _, n := range fdb {
		if bytes.Equal(n.HardwareAddr, mac) && n.Flags&netlink.NTF_SELF == 0 {
			return n.LinkIndex, nil
		}
	}
	return 0, nil
}

// WatchFDB subscribes to the bridge forwarding table notifications of ns
// and returns a function that reports the ports mac was learned on so
// far (in order, repeats included), or an error if the subscription
// failed (then events may be lost). A moved entry lasts only until its
// owner talks again (well under a second), so sampling the table would
// miss it; the subscription does not. It ends with the test.
func (ns *NS) WatchFDB(t T, mac net.HardwareAddr) func() ([]int, error) {
	t.Helper()
	updates := make(chan netlink.NeighUpdate, 4096)
	done := make(chan struct{})
	var mu sync.Mutex
	var subErr error
	h := netns.NsHandle(ns.Fd())
	err := netlink.NeighSubscribeWithOptions(updates, done, netlink.NeighSubscribeOptions{Namespace: &h,
		ErrorCallback: func(err error) {
			mu.Lock()
			defer mu.Unlock()
			if subErr == nil {
				subErr = err
			}
		}})
	if err != nil {
		t.Fatalf("subscribing to neighbour updates in %s: %v", ns.Name, err)
	}
	t.Cleanup(func() { close(done) })
	var ports []int
	return func() ([]int, error) {
		for {
			select {
			case u, ok := <-updates:
				if !ok {
					mu.Lock()
					defer mu.Unlock()
					if subErr == nil {
						subErr = fmt.Errorf("subscription closed")
					}
					return ports, fmt.Errorf("watching the bridge forwarding table in %s: %w", ns.Name, subErr)
				}
				if u.Type == unix.RTM_NEWNEIGH && u.Family == unix.AF_BRIDGE && bytes.Equal(u.HardwareAddr, mac) {
					ports = append(ports, u.LinkIndex)
				}
			default:
				mu.Lock()
				defer mu.Unlock()
				if subErr != nil {
					return ports, fmt.Errorf("watching the bridge forwarding table in %s: %w", ns.Name, subErr)
				}
				return ports, nil
			}
		}
	}
}
