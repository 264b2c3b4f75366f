package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/docker/docker/api/types/versions"
)

// fakeEngine answers like a Docker engine of API version api that refuses
// clients below minAPI (29: 1.52 and 1.44), with firewall backend backend
// in /info. It returns the host for the client.
func fakeEngine(t *testing.T, api, minAPI, backend string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "docker.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("API-Version", api)
		if r.URL.Path == "/_ping" {
			_, _ = io.WriteString(w, "OK")
			return
		}
		parts := strings.SplitN(strings.TrimPrefix(r.URL.Path, "/v"), "/", 2)
		if len(parts) != 2 || versions.LessThan(parts[0], minAPI) {
			w.WriteHeader(http.StatusBadRequest)
			_, _ = fmt.Fprintf(w, `{"message":"client version %s is too old. Minimum supported API version is %s"}`, parts[0], minAPI)
			return
		}
		if parts[1] == "info" {
			_, _ = fmt.Fprintf(w, `{"ServerVersion":"fake","FirewallBackend":{"Driver":%q}}`, backend)
			return
		}
		w.WriteHeader(http.StatusNotFound)
	})}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return "unix://" + sock
}

// TestDockerAPINegotiation: the agent's client talks to 20.10 (1.41), 28
// (1.51) and 29 (1.52, refusing below 1.44) alike.
func TestDockerAPINegotiation(t *testing.T) {
	for _, c := range []struct{ api, min, want string }{
		{"1.41", "1.12", "1.41"},
		{"1.51", "1.24", "1.51"},
		{"1.52", "1.44", "1.51"},
	} {
		t.Run(c.api, func(t *testing.T) {
			dc, err := dockerClient(fakeEngine(t, c.api, c.min, "nftables"))
			if err != nil {
				t.Fatal(err)
			}
			_, err = dc.Info(context.Background())
			if err != nil {
				t.Fatalf("docker info: %v", err)
			}
			if got := dc.ClientVersion(); got != c.want {
				t.Fatalf("negotiated API %s, want %s", got, c.want)
			}
		})
	}
}
