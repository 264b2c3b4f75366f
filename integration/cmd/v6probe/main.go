// Command v6probe is the client inside test containers: a static binary
// (busybox-static's wget crashes in its resolver under static glibc) that
// fetches http://[ADDR]:PORT/ and exits 0 when the answer is 200, 1 when
// the flow failed (timeout: dropped; refused: no listener), 2 on bad use.
package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"time"
)

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: v6probe ADDR PORT TIMEOUT (e.g. 2001:db8::1 443 2s)")
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
