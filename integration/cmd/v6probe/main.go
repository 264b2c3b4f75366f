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
package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/v6reg/v6reg/integration/ethframe"
	"golang.org/x/sys/unix"
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
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: v6probe ADDR PORT TIMEOUT (e.g. 2001:db8::1 443 2s)\n       v6probe forge-arp IFACE MAC COUNT")
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
