// Command v6probe is the client inside test containers: a static binary
// (busybox-static's wget crashes in its resolver under static glibc).
//
//	v6probe ADDR PORT TIMEOUT
//
// fetches http://[ADDR]:PORT/ and exits 0 when the answer is 200, 1 when
// the flow failed (timeout: dropped; refused: no listener), 2 on bad use.
//
//	v6probe forge-arp IFACE MAC COUNT
//
// sends COUNT gratuitous ARP frames out of IFACE whose Ethernet source is
// MAC, 50 ms apart, through an AF_PACKET socket: what any container with
// Docker's default NET_RAW can do to take another's MAC on the bridge.
// Exits 0 when every frame was sent.
//
//	v6probe serve PORT
//
// listens on PORT over TCP and UDP, every address of both families
// (link-local, IPv4, multicast groups the host is in): a TCP connection is
// greeted with "ok\n" and echoed, a datagram is echoed to its sender.
//
//	v6probe dial tcp|udp ADDR PORT TIMEOUT [SRC]
//
// connects (TCP: reads the greeting; UDP: sends one datagram from an
// unconnected socket and takes an echo from any address, so a multicast
// destination works) and exits 0 when the round trip worked, 1 when not.
// SRC binds the source address (an attacker with NET_ADMIN first adds it
// to its interface). ADDR may carry a zone: fe80::1%eth0.
package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/v6reg/v6reg/internal/ethframe"
)

func main() {
	if len(os.Args) == 5 && os.Args[1] == "forge-arp" {
		if err := forgeARP(os.Args[2], os.Args[3], os.Args[4]); err != nil {
			fmt.Fprintln(os.Stderr, "v6probe forge-arp:", err)
			os.Exit(1)
		}
		fmt.Println("sent")
		return
	}
	if len(os.Args) == 3 && os.Args[1] == "serve" {
		err := serve(os.Args[2]) // returns only when it cannot serve
		fmt.Fprintln(os.Stderr, "v6probe serve:", err)
		os.Exit(1)
	}
	if (len(os.Args) == 6 || len(os.Args) == 7) && os.Args[1] == "dial" {
		src := ""
		if len(os.Args) == 7 {
			src = os.Args[6]
		}
		if err := dial(os.Args[2], os.Args[3], os.Args[4], os.Args[5], src); err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		fmt.Println("ok")
		return
	}
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: v6probe ADDR PORT TIMEOUT (e.g. 2001:db8::1 443 2s)\n       v6probe forge-arp IFACE MAC COUNT\n       v6probe serve PORT\n       v6probe dial tcp|udp ADDR PORT TIMEOUT [SRC]")
		os.Exit(2)
	}
	timeout, err := time.ParseDuration(os.Args[3])
	if err != nil {
		fmt.Fprintln(os.Stderr, "v6probe: timeout:", err)
		os.Exit(2)
	}
	c := &http.Client{Timeout: timeout}
	// Fetching the address it is given is this probe's whole job.
	resp, err := c.Get("http://" + net.JoinHostPort(os.Args[1], os.Args[2]) + "/") //nolint:gosec // G704: see above
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	_ = resp.Body.Close() // only the status matters
	if resp.StatusCode != http.StatusOK {
		fmt.Println("HTTP", resp.StatusCode)
		os.Exit(1)
	}
	fmt.Println("ok")
}

func forgeARP(ifname, macArg, countArg string) error {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return err
	}
	mac, err := net.ParseMAC(macArg)
	if err != nil || len(mac) != 6 {
		return fmt.Errorf("MAC %q: want an Ethernet address (%v)", macArg, err)
	}
	count, err := strconv.Atoi(countArg)
	if err != nil || count < 1 {
		return fmt.Errorf("COUNT %q: want a positive number", countArg)
	}
	// The ARP payload's address is no one's: only the frame's source
	// MAC matters to the bridge.
	frame := ethframe.GratuitousARP(mac, [4]byte{192, 0, 2, 1})
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
	if err != nil {
		return fmt.Errorf("packet socket (needs NET_RAW): %w", err)
	}
	defer func() { _ = unix.Close(fd) }() // nothing buffered to lose
	to := &unix.SockaddrLinklayer{Ifindex: ifi.Index, Halen: 6, Protocol: ethframe.Htons(ethframe.TypeARP)}
	copy(to.Addr[:], ethframe.Broadcast)
	for i := range count {
		if i > 0 {
			time.Sleep(50 * time.Millisecond)
		}
		if err := unix.Sendto(fd, frame, 0, to); err != nil {
			return fmt.Errorf("frame %d: %w", i+1, err)
		}
	}
	return nil
}

func serve(portArg string) error {
	ln, err := net.Listen("tcp", ":"+portArg)
	if err != nil {
		return err
	}
	pc, err := net.ListenPacket("udp", ":"+portArg)
	if err != nil {
		return err
	}
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(buf[:n], from) // a lost echo is the client's timeout
		}
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer func() { _ = c.Close() }()
			_, _ = c.Write([]byte("ok\n"))
			_, _ = io.Copy(c, c)
		}()
	}
}

func dial(proto, addr, portArg, timeoutArg, src string) error {
	timeout, err := time.ParseDuration(timeoutArg)
	if err != nil {
		return fmt.Errorf("timeout: %w", err)
	}
	hostport := net.JoinHostPort(addr, portArg)
	switch proto {
	case "tcp":
		d := net.Dialer{Timeout: timeout}
		if src != "" {
			d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
			d.Control = transparent
		}
		c, err := d.Dial("tcp", hostport)
		if err != nil {
			return err
		}
		defer func() { _ = c.Close() }()
		_ = c.SetReadDeadline(time.Now().Add(timeout))
		b := make([]byte, 3)
		_, err = io.ReadFull(c, b)
		return err
	case "udp":
		to, err := net.ResolveUDPAddr("udp", hostport)
		if err != nil {
			return err
		}
		network, local := "udp6", "[::]:0"
		if to.IP.To4() != nil {
			network, local = "udp4", "0.0.0.0:0"
		}
		lc := net.ListenConfig{}
		if src != "" {
			local = net.JoinHostPort(src, "0")
			lc.Control = transparent
		}
		c, err := lc.ListenPacket(context.Background(), network, local)
		if err != nil {
			return err
		}
		pc := c.(*net.UDPConn)
		defer func() { _ = pc.Close() }()
		if _, err := pc.WriteTo([]byte("v6probe"), to); err != nil {
			return err
		}
		_ = pc.SetReadDeadline(time.Now().Add(timeout))
		b := make([]byte, 64)
		_, _, err = pc.ReadFrom(b)
		return err
	}
	return fmt.Errorf("protocol %q: want tcp or udp", proto)
}

// transparent lets a socket bind an address its host does not hold and
// send from it (IP_TRANSPARENT, IPV6_TRANSPARENT: needs NET_ADMIN), as an
// attacker's container would to forge a source.
func transparent(network, _ string, rc syscall.RawConn) error {
	var serr error
	err := rc.Control(func(fd uintptr) {
		if strings.HasSuffix(network, "6") {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1)
		} else {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1)
		}
	})
	if err != nil {
		return err
	}
	return serr
}
