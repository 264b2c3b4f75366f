package integration

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// traefikBinary is the Traefik built by integration/scripts/build-traefik.sh
// (make test's deps build it from the module proxy and cache it).
func traefikBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("V6REG_TRAEFIK_BIN"); p != "" {
		return p
	}
	p := "/var/cache/v6reg/traefik-3.6.12/traefik"
	if _, err := os.Stat(p); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("no traefik at %s: make test builds it (integration/scripts/build-traefik.sh)", p)
		}
		t.Skipf("no traefik at %s: run integration/scripts/build-traefik.sh (make test does)", p)
	}
	return p
}

// Traefik with the Consul Catalog provider routes the Host() rule that
// v6reg's tag templates made straight to the web container's IPv6 address.
func TestTraefikRoutesToContainer(t *testing.T) {
	bin := traefikBinary(t)
	e, ctx := newE2E(t)
	web, db, fetch := demoWorkloads(t, e, ctx)
	waitOpen(t, e, ctx, web, db, fetch)

	// The tags v6reg registered: the router rule names the host.
	var rule string
	if err := WaitFor(ctx, 15*time.Second, func() error {
		svcs, err := e.ConsulServices()
		if err != nil {
			return err
		}
		for _, s := range svcs {
			if s.Service != "web" {
				continue
			}
			for _, tag := range s.Tags {
				if strings.Contains(tag, ".rule=Host(") {
					rule = tag
				}
			}
		}
		if rule == "" {
			return fmt.Errorf("no Host() router tag on service web: %v", svcs)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	host := rule[strings.Index(rule, "Host(`")+6:]
	host = host[:strings.Index(host, "`")]
	t.Logf("v6reg registered %q; routing Host %s", rule, host)

	logf, err := os.Create(filepath.Join(e.Dir, "traefik.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(bin,
		"--entryPoints.web.address=:8088",
		"--providers.consulCatalog.endpoint.address="+e.Consul.HTTPAddr,
		"--providers.consulCatalog.exposedByDefault=false",
		"--providers.consulCatalog.refreshInterval=1s",
		"--log.level=INFO",
	)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := e.Node.Start(cmd); err != nil {
		t.Fatalf("starting traefik: %v", err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })

	// From the office, through Traefik on the node's uplink address, to
	// the container (its HTTP check must pass first: Traefik routes only
	// healthy instances).
	client := e.Office.HTTPClient()
	client.Timeout = 2 * time.Second
	var body string
	err = WaitFor(ctx, 45*time.Second, func() error {
		req, _ := http.NewRequest("GET", "http://[2001:db8:ff:1::2]:8088/", nil)
		req.Host = host
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(b)))
		}
		body = string(b)
		return nil
	})
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(e.Dir, "traefik.log"))
		t.Fatalf("Traefik did not route %s to web: %v\ntraefik log:\n%s", host, err, tail(string(log), 30))
	}
	if strings.TrimSpace(body) != "web" {
		t.Fatalf("Traefik answered %q, want the web container's page", body)
	}
	// A host v6reg did not register is not routed.
	req, _ := http.NewRequest("GET", "http://[2001:db8:ff:1::2]:8088/", nil)
	req.Host = "nope." + host
	if resp, err := client.Do(req); err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Fatalf("unknown host answered %d, want 404", resp.StatusCode)
		}
	}
}
