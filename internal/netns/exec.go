package netns

import (
	"context"
	"net"
	"net/http"
	"os/exec"
	"time"
)

// Start starts cmd inside the namespace: the child is forked from a thread
// locked into it and so inherits the network namespace, and only that (not
// a new mount namespace, as `ip netns exec` makes, which hides the cgroup
// mounts dockerd needs).
func (ns *NS) Start(cmd *exec.Cmd) error {
	return ns.Run(cmd.Start)
}

// Path is the bind mount of the namespace, for tools that take a path.
func (ns *NS) Path() string { return "/run/netns/" + ns.Name }

// DialContext dials from inside the namespace (the socket is created there
// and stays there), for HTTP clients of servers that run in it.
func (ns *NS) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := ns.Run(func() error {
		// Bounded, so a dial to a dropped address cannot outlive the test.
		d := net.Dialer{Timeout: 10 * time.Second}
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// HTTPClient is an HTTP client whose connections are made in the namespace.
func (ns *NS) HTTPClient() *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: ns.DialContext, DisableKeepAlives: true}}
}
