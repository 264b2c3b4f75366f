package integration

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/versions"
	"github.com/google/nftables"
	"github.com/google/nftables/userdata"

	"github.com/v6reg/v6reg/ipam"
)

// The chain Docker 27+ runs first in ip6tables (iptables-nft keeps it in
// nftables table ip6 filter).
var (
	ip6FilterTable = &nftables.Table{Family: nftables.TableFamilyIPv6, Name: "filter"}
	dockerUser     = &nftables.Chain{Name: "DOCKER-USER", Table: ip6FilterTable}
)

// nodeNft is a netlink conn to nftables in the node namespace.
func nodeNft(t *testing.T, e *Env) *nftables.Conn {
	t.Helper()
	conn, err := nftables.New(nftables.WithNetNSFd(e.Node.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	return conn
}

// v6regDockerUserRules returns the rules the agent put in DOCKER-USER;
// ok is false when the node has no such chain (Docker does not filter
// IPv6: 20.10, or ip6tables off).
func v6regDockerUserRules(t *testing.T, e *Env) (rules []*nftables.Rule, ok bool) {
	t.Helper()
	conn := nodeNft(t, e)
	chains, err := conn.ListChainsOfTableFamily(nftables.TableFamilyIPv6)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(chains, func(c *nftables.Chain) bool { return c.Table.Name == "filter" && c.Name == dockerUser.Name }) {
		return nil, false
	}
	all, err := conn.GetRules(ip6FilterTable, dockerUser)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range all {
		if c, _ := userdata.GetString(r.UserData, userdata.TypeComment); strings.HasPrefix(c, "v6reg") {
			rules = append(rules, r)
		}
	}
	return rules, true
}

func deleteV6regDockerUser(t *testing.T, e *Env) {
	t.Helper()
	rules, _ := v6regDockerUserRules(t, e)
	conn := nodeNft(t, e)
	for _, r := range rules {
		if err := conn.DelRule(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := conn.Flush(); err != nil {
		t.Fatalf("deleting v6reg's DOCKER-USER rule: %v", err)
	}
}

var markTable = &nftables.Table{Family: nftables.TableFamilyIPv6, Name: "v6reg-docker"}

// v6regMarkTable says whether the agent made table ip6 v6reg-docker
// (Docker's nftables backend).
func v6regMarkTable(t *testing.T, e *Env) bool {
	t.Helper()
	conn := nodeNft(t, e)
	tables, err := conn.ListTablesOfFamily(nftables.TableFamilyIPv6)
	if err != nil {
		t.Fatal(err)
	}
	return slices.ContainsFunc(tables, func(x *nftables.Table) bool { return x.Name == markTable.Name })
}

func deleteV6regMarkTable(t *testing.T, e *Env) {
	t.Helper()
	conn := nodeNft(t, e)
	conn.DelTable(markTable)
	if err := conn.Flush(); err != nil {
		t.Fatalf("deleting table ip6 v6reg-docker: %v", err)
	}
}

// otherNetwork creates a Docker network that is not v6reg's (Docker's own
// IPAM, the given IPv6 gateway mode), routes its subnet from the router
// to the node, and starts a web server on port 8080 in it, published
// nowhere. It returns the server's address.
func otherNetwork(ctx context.Context, t *testing.T, e *Env, name string, subnet netip.Prefix, mode string) netip.Addr {
	t.Helper()
	yes := true
	_, err := e.Docker.Client.NetworkCreate(ctx, name, network.CreateOptions{
		Driver: "bridge", EnableIPv6: &yes,
		IPAM:    &network.IPAM{Config: []network.IPAMConfig{{Subnet: subnet.String()}}},
		Options: map[string]string{ipam.OptBridgeName: name, ipam.OptGatewayModeIPv6: mode},
	})
	if err != nil {
		t.Fatalf("network %s: %v", name, err)
	}
	if err := e.Router.Route(subnet, transitNode, "to-node"); err != nil {
		t.Fatal(err)
	}
	cfg := &container.Config{Image: e.Image, Cmd: []string{"/bin/sh", "-c", "mkdir -p /www && echo other > /www/index.html && exec httpd -f -p [::]:8080 -h /www"}}
	created, err := e.Docker.Client.ContainerCreate(ctx, cfg, &container.HostConfig{NetworkMode: container.NetworkMode(name)}, nil, nil, name+"-web")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Docker.Client.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	ins, err := e.Docker.Client.ContainerInspect(ctx, created.ID)
	if err != nil {
		t.Fatal(err)
	}
	a, err := netip.ParseAddr(ins.NetworkSettings.Networks[name].GlobalIPv6Address)
	if err != nil {
		t.Fatalf("%s: no IPv6 address: %v", name, err)
	}
	return a
}

// TestDockerDefersToV6reg proves, on an engine that filters IPv6 (Docker
// 27+ with ip6tables, its default), with real packets: Docker's own
// chains drop what v6reg allows unless v6reg's DOCKER-USER rule is there;
// the agent puts the rule back within a resync; and Docker still protects
// a network that is not v6reg's. On 20.10 (no ip6tables) it checks that
// the agent added nothing.
func TestDockerDefersToV6reg(t *testing.T) {
	e, ctx := newE2E(t)
	rules, filtering := v6regDockerUserRules(t, e)
	marking := v6regMarkTable(t, e)
	switch {
	case marking:
		t.Logf("Docker's nftables backend: v6reg sets its bridge-accept-fwmark in table ip6 v6reg-docker")
	case !filtering:
		t.Logf("engine without ip6tables DOCKER-USER (20.10 or ip6tables off): v6reg alone filters IPv6")
		return
	case len(rules) != 1:
		t.Fatalf("want one v6reg rule in DOCKER-USER, have %d", len(rules))
	}
	web, err := e.Run(ctx, "web", map[string]string{"v6reg.ingress": "tcp/8080 from @office"},
		"mkdir -p /www && echo web > /www/index.html && exec httpd -f -p [::]:8080 -h /www")
	if err != nil {
		t.Fatal(err)
	}
	waitOpen(t, e, ctx, web)
	if err := WaitFor(ctx, allowWait, func() error { return HTTPGet(e.Office, web.Addr, 8080, time.Second) }); err != nil {
		t.Fatalf("office to web, allowed by its policy: %v", err)
	}
	if marking {
		deleteV6regMarkTable(t, e)
	} else {
		deleteV6regDockerUser(t, e)
	}
	if err := HTTPGet(e.Office, web.Addr, 8080, denyWait); err == nil || !isTimeout(err) {
		t.Fatalf("without v6reg's DOCKER-USER rule (or mark) Docker should drop office to web; got %v", err)
	}
	// resync_interval is 10 s in the topology's config.
	if err := WaitFor(ctx, 25*time.Second, func() error { return HTTPGet(e.Office, web.Addr, 8080, time.Second) }); err != nil {
		t.Fatalf("the agent did not put its DOCKER-USER rule back: %v", err)
	}
	other := otherNetwork(ctx, t, e, "other0", netip.MustParsePrefix("2001:db8:1:2:4::/80"), "routed")
	if err := HTTPGet(e.Office, other, 8080, denyWait); err == nil || !isTimeout(err) {
		t.Fatalf("office reached an unpublished port on another Docker network: Docker's protection must stay; got %v", err)
	}
	if err := HTTPGet(e.Node, other, 8080, 2*time.Second); err != nil {
		t.Fatalf("the other network's server does not answer the node itself (broken setup, not a drop): %v", err)
	}
}

// TestDockerLevers measures the other ways to make v6reg the authority on
// an engine that filters IPv6 (packaging/README.md, "Docker engines"
// records the results). Set V6REG_LEVERS=1 with V6REG_DOCKERD naming a
// 27+ dockerd.
func TestDockerLevers(t *testing.T) {
	if os.Getenv("V6REG_LEVERS") != "1" {
		t.Skip("set V6REG_LEVERS=1 (and V6REG_DOCKERD) to measure the engine levers")
	}
	webOf := func(t *testing.T, e *Env, ctx context.Context) Workload { //nolint:revive // test helper
		t.Helper()
		w, err := e.Run(ctx, "web", map[string]string{"v6reg.ingress": "tcp/8080 from @office"},
			"mkdir -p /www && echo web > /www/index.html && exec httpd -f -p [::]:8080 -h /www")
		if err != nil {
			t.Fatal(err)
		}
		waitOpen(t, e, ctx, w)
		return w
	}
	verdict := func(err error) string {
		if err == nil {
			return "passes"
		}
		if isTimeout(err) {
			return "dropped"
		}
		return err.Error()
	}
	t.Run("ip6tables=false", func(t *testing.T) {
		e, ctx := newTestEnv(t, "v6l-", 5*time.Minute, agentBin, "--ip6tables=false")
		if err := e.StartAgent(ctx); err != nil {
			t.Fatal(err)
		}
		w := webOf(t, e, ctx)
		t.Logf("office -> v6reg web (allowed): %s", verdict(WaitFor(ctx, allowWait, func() error { return HTTPGet(e.Office, w.Addr, 8080, time.Second) })))
		t.Logf("internet -> v6reg web (denied): %s", verdict(HTTPGet(e.Internet, w.Addr, 8080, denyWait)))
		o := otherNetwork(ctx, t, e, "other0", netip.MustParsePrefix("2001:db8:1:2:4::/80"), "routed")
		t.Logf("office -> other network, unpublished port: %s", verdict(HTTPGet(e.Office, o, 8080, denyWait)))
	})
	t.Run("allow-direct-routing", func(t *testing.T) {
		e, ctx := newTestEnv(t, "v6l-", 5*time.Minute, agentBin, "--allow-direct-routing")
		if err := e.StartAgent(ctx); err != nil {
			t.Fatal(err)
		}
		w := webOf(t, e, ctx)
		deleteV6regDockerUser(t, e)
		t.Logf("office -> v6reg web (allowed), without v6reg's DOCKER-USER rule: %s", verdict(HTTPGet(e.Office, w.Addr, 8080, denyWait)))
	})
	t.Run("nat-unprotected", func(t *testing.T) {
		e, ctx := newE2E(t)
		o := otherNetwork(ctx, t, e, "unprot0", netip.MustParsePrefix("2001:db8:1:2:5::/80"), "nat-unprotected")
		t.Logf("office -> nat-unprotected network, unpublished port: %s", verdict(HTTPGet(e.Office, o, 8080, allowWait)))
		var l net.Listener
		if err := e.Internet.Run(func() (err error) {
			l, err = net.Listen("tcp", fmt.Sprintf("[%s]:8443", InternetAddr))
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = l.Close() }()
		src := make(chan string, 1)
		go func() {
			c, err := l.Accept()
			if err != nil {
				src <- err.Error()
				return
			}
			src <- c.RemoteAddr().String()
			_ = c.Close()
		}()
		ins, err := e.Docker.Client.ContainerInspect(ctx, "unprot0-web")
		if err != nil {
			t.Fatal(err)
		}
		_ = e.Fetch(ctx, ins.ID, InternetAddr, 8443, 2*time.Second)
		select {
		case s := <-src:
			t.Logf("container %s -> internet: the internet sees the source %s", o, s)
		case <-time.After(5 * time.Second):
			t.Logf("container %s -> internet: nothing arrived", o)
		}
	})
}

// TestIPAMEngineIdentity restarts a container on the real engine and asks
// for its old address from a second container. Docker 29 (API 1.52+)
// names the endpoint in RequestAddress, so the container gets its own
// address back; 28 and older send no options (measured on 28.5.2:
// `"Options":null`), so it gets a new one and the old one stays in
// hold-down. Either way the second container is refused the address.
func TestIPAMEngineIdentity(t *testing.T) {
	e, ctx := newE2E(t)
	w, err := e.Run(ctx, "ident-web", nil, "exec sleep 3600")
	if err != nil {
		t.Fatal(err)
	}
	timeout := 1
	if err := e.Docker.Client.ContainerRestart(ctx, w.ID, container.StopOptions{Timeout: &timeout}); err != nil {
		t.Fatal(err)
	}
	ins, err := e.Docker.Client.ContainerInspect(ctx, w.ID)
	if err != nil {
		t.Fatal(err)
	}
	after := ins.NetworkSettings.Networks[NetworkName].GlobalIPv6Address
	sv, err := e.Docker.Client.ServerVersion(ctx)
	if err != nil {
		t.Fatal(err)
	}
	names := versions.GreaterThanOrEqualTo(sv.APIVersion, "1.52")
	t.Logf("engine %s, API %s: before restart %s, after %s", sv.Version, sv.APIVersion, w.Addr, after)
	if names && after != w.Addr.String() {
		t.Fatalf("the engine names its endpoints, but the restarted container got %s, not its own %s", after, w.Addr)
	}
	if !names && after == w.Addr.String() {
		t.Fatalf("the engine sends no endpoint name, yet the restarted container kept %s: hold-down not applied?", after)
	}
	cfg := &container.Config{Image: e.Image, Cmd: []string{"/bin/sh", "-c", "exec sleep 3600"}}
	nc := &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{
		NetworkName: {IPAMConfig: &network.EndpointIPAMConfig{IPv6Address: w.Addr.String()}},
	}}
	created, err := e.Docker.Client.ContainerCreate(ctx, cfg, &container.HostConfig{NetworkMode: container.NetworkMode(NetworkName)}, nc, nil, "ident-thief")
	if err != nil {
		t.Fatal(err)
	}
	err = e.Docker.Client.ContainerStart(ctx, created.ID, container.StartOptions{})
	if err == nil {
		t.Fatalf("a second container was given %s, which belongs to ident-web", w.Addr)
	}
	t.Logf("second container asking for %s: %v", w.Addr, err)
}
