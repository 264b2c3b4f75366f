package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
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
	nft    bool // Docker's nftables firewall backend (29+)
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
	if bridge == "" && len(netID) >= 12 {
		bridge = "br-" + netID[:12] // Docker's name for a bridge it names itself
	}
	d := &dockerFirewall{conn: conn, prefix: prefix, bridge: bridge, nft: strings.HasPrefix(backend, "nftables"), log: log.With("component", "docker-firewall")}
	if err := d.ensure(); err != nil {
		return nil, err
	}
	d.log.Info("docker firewall checked", "engine", info.ServerVersion, "backend", backend)
	return d, nil
}

func (d *dockerFirewall) ensure() error {
	if d.nft {
		return d.ensureMark()
	}
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

// ensureMark opens Docker's nftables backend: Docker accepts what carries
// the mark of its bridge-accept-fwmark option, which only the operator can
// set; v6reg reads it from Docker's rule and marks what goes to its
// prefix.
func (d *dockerFirewall) ensureMark() error {
	mark, mask, backend, found, err := firewall.DockerAcceptMark(d.conn, d.bridge)
	if err != nil {
		return fmt.Errorf("reading Docker's nftables rules: %w", err)
	}
	if !backend {
		d.log.Debug("no table ip6 docker-bridges: Docker does not filter IPv6 here")
		return nil
	}
	if !found {
		return fmt.Errorf("docker's nftables firewall backend drops routed IPv6 to the v6reg network (bridge %s) unless packets carry the mark of its bridge-accept-fwmark option, which is not set: "+
			"add \"bridge-accept-fwmark\": \"0x10000000/0x10000000\" (a bit no other tool on the node uses) to /etc/docker/daemon.json (dockerd --bridge-accept-fwmark) and restart dockerd; "+
			"v6reg then marks what goes to the node prefix, and table inet v6reg decides; "+
			"or set \"firewall-backend\": \"iptables\", or \"ip6tables\": false", d.bridge)
	}
	changed, err := firewall.EnsureDockerMark(d.conn, d.prefix, d.bridge, mark, mask)
	if err != nil {
		return err
	}
	if changed {
		d.log.Info("packets to the node prefix marked with Docker's bridge-accept-fwmark: Docker defers to table inet v6reg for it",
			"prefix", d.prefix, "bridge", d.bridge, "mark", fmt.Sprintf("%#x/%#x", mark, mask))
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
