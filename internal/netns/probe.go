package netns

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// ServeTCP listens on [addr]:port inside ns, greets every connection with
// "ok\n" and then echoes what it reads, until the test ends.
func (ns *NS) ServeTCP(t testing.TB, addr netip.Addr, port int) {
	t.Helper()
	var ln net.Listener
	err := ns.Run(func() (err error) {
		ln, err = net.Listen("tcp", net.JoinHostPort(addr.String(), strconv.Itoa(port)))
		return err
	})
	if err != nil {
		t.Fatalf("listen tcp %s:%d in %s: %v", addr, port, ns.Name, err)
	}
	t.Cleanup(func() { _ = ln.Close() }) // ends the accept loop; nothing to report
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer func() { _ = c.Close() }() // the peer decides when the echo ends
				_, _ = io.WriteString(c, "ok\n")
				_, _ = io.Copy(c, c)
			}()
		}
	}()
}

// ServeUDP echoes datagrams on [addr]:port inside ns until the test ends.
func (ns *NS) ServeUDP(t testing.TB, addr netip.Addr, port int) {
	t.Helper()
	var pc net.PacketConn
	err := ns.Run(func() (err error) {
		pc, err = net.ListenPacket("udp", net.JoinHostPort(addr.String(), strconv.Itoa(port)))
		return err
	})
	if err != nil {
		t.Fatalf("listen udp %s:%d in %s: %v", addr, port, ns.Name, err)
	}
	t.Cleanup(func() { _ = pc.Close() }) // ends the echo loop; nothing to report
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(buf[:n], from)
		}
	}()
}

// DialTCP connects from ns to [dst]:port (source address src if valid) and
// reads the server's greeting; nil means the round trip worked.
func (ns *NS) DialTCP(src, dst netip.Addr, port int, timeout time.Duration) error {
	c, err := ns.ConnectTCP(src, dst, port, timeout)
	if err != nil {
		return err
	}
	return c.Close()
}

// ConnectTCP is DialTCP that keeps the connection open (greeting consumed).
func (ns *NS) ConnectTCP(src, dst netip.Addr, port int, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := ns.Run(func() error {
		d := net.Dialer{Timeout: timeout}
		if src.IsValid() {
			d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
		}
		var err error
		c, err = d.Dial("tcp", net.JoinHostPort(dst.String(), strconv.Itoa(port)))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("tcp %s -> [%s]:%d: %w", ns.Name, dst, port, err)
	}
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 3)
	if _, err := io.ReadFull(c, buf); err != nil {
		_ = c.Close() // the greeting error is the one to report
		return nil, fmt.Errorf("tcp greeting from [%s]:%d: %w", dst, port, err)
	}
	_ = c.SetReadDeadline(time.Time{})
	return c, nil
}

// EchoUDP sends one datagram from ns to [dst]:port and waits for the
// echo. The echo may come from any address: a server on [::] answers from
// the address the kernel picks, not always the one it was sent to (the
// node's gateway address, a multicast group).
func (ns *NS) EchoUDP(dst netip.Addr, port int, timeout time.Duration) error {
	network, local := "udp6", "[::]:0"
	if dst.Is4() {
		network, local = "udp4", "0.0.0.0:0"
	}
	var pc net.PacketConn
	err := ns.Run(func() (err error) {
		pc, err = net.ListenPacket(network, local)
		return err
	})
	if err != nil {
		return fmt.Errorf("udp socket for [%s]:%d: %w", dst, port, err)
	}
	defer func() { _ = pc.Close() }() // the echo already answered or failed
	_ = pc.SetDeadline(time.Now().Add(timeout))
	to := &net.UDPAddr{IP: dst.AsSlice(), Zone: dst.Zone(), Port: port}
	if _, err := pc.WriteTo([]byte("ping"), to); err != nil {
		return fmt.Errorf("udp send to [%s]:%d: %w", dst, port, err)
	}
	buf := make([]byte, 16)
	n, _, err := pc.ReadFrom(buf)
	if err != nil {
		return fmt.Errorf("udp echo from [%s]:%d: %w", dst, port, err)
	}
	if string(buf[:n]) != "ping" {
		return fmt.Errorf("udp echo from [%s]:%d: got %q", dst, port, buf[:n])
	}
	return nil
}

// Ping sends one ICMPv6 echo request from ns to dst (raw socket) and waits
// for the matching echo reply.
func (ns *NS) Ping(dst netip.Addr, timeout time.Duration) error {
	network, listen, proto := "ip6:ipv6-icmp", "::", 58
	var echo, reply icmp.Type = ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply
	if dst.Is4() {
		network, listen, proto = "ip4:icmp", "0.0.0.0", 1
		echo, reply = ipv4.ICMPTypeEcho, ipv4.ICMPTypeEchoReply
	}
	var pc *icmp.PacketConn
	err := ns.Run(func() (err error) {
		pc, err = icmp.ListenPacket(network, listen)
		return err
	})
	if err != nil {
		return fmt.Errorf("icmp socket: %w", err)
	}
	defer func() { _ = pc.Close() }() // the reply already came or failed
	id := os.Getpid() & 0xffff
	seq := int(time.Now().UnixNano() & 0x7fff)
	msg := icmp.Message{Type: echo, Body: &icmp.Echo{ID: id, Seq: seq, Data: []byte("v6reg")}}
	b, err := msg.Marshal(nil)
	if err != nil {
		return err
	}
	if _, err := pc.WriteTo(b, &net.IPAddr{IP: dst.AsSlice(), Zone: dst.Zone()}); err != nil {
		return fmt.Errorf("icmp send to %s: %w", dst, err)
	}
	deadline := time.Now().Add(timeout)
	_ = pc.SetReadDeadline(deadline)
	buf := make([]byte, 1500)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return fmt.Errorf("icmp echo reply from %s: %w", dst, err)
		}
		m, err := icmp.ParseMessage(proto, buf[:n])
		if err != nil || m.Type != reply {
			continue
		}
		if e, ok := m.Body.(*icmp.Echo); ok && e.Seq == seq && sameAddr(from, dst) {
			return nil
		}
	}
}

// ErrTimeout reports whether err is a timeout (what a dropped packet looks
// like to a dialer), as opposed to a refusal or an unreachable error.
func ErrTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded)
}

// WaitTCPQuiet waits until ns has no TCP socket other than listeners and
// TIME_WAIT (a closed connection that sends nothing more): every FIN and
// its retransmissions are out. A test that counts packets after changing
// the rules calls it first, so that the close of a connection made before
// the change is not counted as traffic after it.
func (ns *NS) WaitTCPQuiet(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		var busy []string
		err := ns.Run(func() error {
			// thread-self: /proc/net is the thread group leader's
			// namespace, not this locked thread's.
			b, err := os.ReadFile("/proc/thread-self/net/tcp6")
			if err != nil {
				return err
			}
			busy = busyTCP(string(b))
			return nil
		})
		if err != nil {
			return fmt.Errorf("reading tcp sockets in %s: %w", ns.Name, err)
		}
		if len(busy) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("tcp sockets in %s still closing after %s: %v", ns.Name, timeout, busy)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// busyTCP returns the lines of a /proc/net/tcp6 table whose state is
// neither LISTEN (0A) nor TIME_WAIT (06).
func busyTCP(table string) []string {
	var busy []string
	for i, line := range strings.Split(strings.TrimSpace(table), "\n") {
		f := strings.Fields(line)
		if i == 0 || len(f) < 4 {
			continue // the header
		}
		if st := f[3]; st != "0A" && st != "06" {
			busy = append(busy, f[1]+" -> "+f[2]+" state "+st)
		}
	}
	return busy
}

// ServeUDPFunc receives datagrams on [::]:port (both families) inside ns
// until the test ends and calls got with each sender's address; it never
// answers.
func (ns *NS) ServeUDPFunc(t testing.TB, port int, got func(from netip.Addr)) {
	t.Helper()
	var pc net.PacketConn
	err := ns.Run(func() (err error) {
		pc, err = net.ListenPacket("udp", net.JoinHostPort("::", strconv.Itoa(port)))
		return err
	})
	if err != nil {
		t.Fatalf("listen udp [::]:%d in %s: %v", port, ns.Name, err)
	}
	t.Cleanup(func() { _ = pc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if ua, ok := from.(*net.UDPAddr); ok {
				a, _ := netip.AddrFromSlice(ua.IP)
				got(a.Unmap())
			}
		}
	}()
}

// LinkLocal is link's usable (not tentative) link-local address in ns.
func (ns *NS) LinkLocal(link string) (netip.Addr, error) {
	l, err := ns.nl.LinkByName(link)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("link %s in %s: %w", link, ns.Name, err)
	}
	as, err := ns.nl.AddrList(l, netlink.FAMILY_V6)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("addresses of %s in %s: %w", link, ns.Name, err)
	}
	for _, a := range as {
		ip, ok := netip.AddrFromSlice(a.IP)
		if ok && ip.IsLinkLocalUnicast() && a.Flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) == 0 {
			return ip, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("%s in %s has no usable link-local address yet", link, ns.Name)
}

// sameAddr compares a reply's address with the one probed, zones aside
// (a reply names its interface, a probe may give its index).
func sameAddr(from net.Addr, dst netip.Addr) bool {
	ia, ok := from.(*net.IPAddr)
	if !ok {
		return false
	}
	a, ok := netip.AddrFromSlice(ia.IP)
	return ok && a.Unmap() == dst.WithZone("").Unmap()
}
