// Package keepalive checks that an HTTP server closes keep-alive
// connections that go idle (the agent's API, metrics and driver sockets).
package keepalive

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// ClosedWhenIdle sends one request (raw HTTP/1.1, keep-alive) on a new
// connection to the unix socket path, reads the answer, then stays silent
// and waits for the server to close the connection. It returns how long
// the server took, or an error if the request failed, the answer was not
// 200 or the connection was still open after limit.
func ClosedWhenIdle(path, request string, limit time.Duration) (time.Duration, error) {
	c, err := net.Dial("unix", path)
	if err != nil {
		return 0, err
	}
	defer func() { _ = c.Close() }() // already closed by the server, or the error says why
	if _, err := io.WriteString(c, request); err != nil {
		return 0, fmt.Errorf("sending the request: %w", err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return 0, fmt.Errorf("reading the answer: %w", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close() // read to the end above
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("answer: HTTP %d", resp.StatusCode)
	}
	start := time.Now()
	_ = c.SetReadDeadline(start.Add(limit))
	if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
		return time.Since(start), fmt.Errorf("idle keep-alive connection: read %v after %s, want EOF (closed by the server)", err, time.Since(start).Round(time.Millisecond))
	}
	return time.Since(start), nil
}
