package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	docker "github.com/docker/docker/client"
	"github.com/google/nftables"

	"github.com/v6reg/v6reg/firewall"
)

// dockerFirewall makes v6reg the one authority for IPv6 to its network
// whatever the engine (packaging/README.md, "Docker engines"): on Docker
// 27+ with ip6tables (the default), Docker's own chains drop routed IPv6
// to the network, so v6reg puts its accept for the prefix first in
// DOCKER-USER, and keeps it there (Docker recreates its chains when
// firewalld reloads or dockerd restarts). An engine whose firewall v6reg
// cannot open returns an error that names the setting to change.
type dockerFirewall struct {
	conn   *nftables.Conn
	prefix netip.Prefix
	bridge string
	log    *slog.Logger
}

func newDockerFirewall(ctx context.Context, dc *docker.Client, conn *nftables.Conn, prefix netip.Prefix, bridge, netID string, log *slog.Logger) (*dockerFirewall, error) {
	info, err := dc.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("docker info: %w", err)
	}
	backend := "iptables"
	if info.FirewallBackend != nil {
		backend = info.FirewallBackend.Driver
	}
	if backend == "nftables" {
		return nil, fmt.Errorf("docker engine %s uses its nftables firewall backend, whose chains drop routed IPv6 to the v6reg network and which v6reg cannot open yet: "+
			"set \"firewall-backend\": \"iptables\" in /etc/docker/daemon.json (dockerd --firewall-backend=iptables), "+
			"or \"ip6tables\": false (--ip6tables=false) so that table inet v6reg alone filters IPv6, and restart dockerd", info.ServerVersion)
	}
	if bridge == "" && len(netID) >= 12 {
		bridge = "br-" + netID[:12] // Docker's name for a bridge it names itself
	}
	d := &dockerFirewall{conn: conn, prefix: prefix, bridge: bridge, log: log.With("component", "docker-firewall")}
	if err := d.ensure(); err != nil {
		return nil, err
	}
	d.log.Info("docker firewall checked", "engine", info.ServerVersion, "backend", backend)
	return d, nil
}

func (d *dockerFirewall) ensure() error {
	res, err := firewall.EnsureDockerUserAccept(d.conn, d.prefix, d.bridge)
	if errors.Is(err, firewall.ErrDockerIP6TablesLegacy) {
		return err
	}
	if err != nil {
		return fmt.Errorf("opening Docker's ip6tables to the v6reg network: %w", err)
	}
	switch res {
	case firewall.DockerUserAdded:
		d.log.Info("accept for the node prefix put first in ip6tables DOCKER-USER: Docker defers to table inet v6reg for it", "prefix", d.prefix, "bridge", d.bridge)
	case firewall.DockerUserAbsent:
		d.log.Debug("no ip6tables DOCKER-USER chain: Docker does not filter IPv6 here")
	}
	return nil
}

// keep re-checks the rule every interval until ctx ends.
func (d *dockerFirewall) keep(ctx context.Context, every time.Duration) {
	everyTick(ctx, every, func() {
		if err := d.ensure(); err != nil {
			d.log.Error("docker firewall check failed", "err", err)
		}
	})
}
