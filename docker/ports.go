package docker

import (
	"context"
	"fmt"
	"log/slog"

	"golang.org/x/sync/errgroup"
)

// BridgePorts finds the bridge port (host-side veth ifindex) of network
// namespaces given by their files; *firewall.PortFinder satisfies it.
// ports[i] is 0 when errs[i] says why.
type BridgePorts interface {
	Ports(netns []string) (ports []int, errs []error)
}

// PortCache keeps each container's bridge port, so that a container is
// inspected once per start, not per reconcile. Entries are keyed by
// container ID and remember the endpoint they were found for: a restarted
// container keeps its ID but gets a new endpoint and a new veth, so a new
// endpoint ID is looked up again. Only the reconcile goroutine uses it.
type PortCache struct {
	docker  API
	finder  BridgePorts
	network string
	log     *slog.Logger
	known   map[string]portEntry
}

type portEntry struct {
	endpoint string
	port     int
	failed   bool // not found: Port 0, retried on the next full reconcile
}

// NewPortCache finds ports with finder, inspecting containers through
// docker for their network namespaces.
func NewPortCache(docker API, finder BridgePorts, network string, log *slog.Logger) *PortCache {
	return &PortCache{docker: docker, finder: finder, network: network, log: log, known: map[string]portEntry{}}
}

// Fill sets the Port of every container that has an endpoint on the
// network: from the cache, or by inspecting the containers whose endpoint
// is new (and, when retryFailed, those whose lookup failed) and asking the
// finder once for all of them. A container without an address needs its
// port too: the agent closes that port, which is otherwise open to any
// frame the container forges. A container whose port is not found keeps
// Port 0 (the firewall then binds its address to its MAC only) and is
// logged; it never holds up the others or the reconcile.
func (pc *PortCache) Fill(ctx context.Context, cs []Container, retryFailed bool) {
	alive := make(map[string]bool, len(cs))
	var todo []int // indexes into cs
	for i, c := range cs {
		alive[c.ID] = true
		if c.EndpointID == "" {
			continue
		}
		e, ok := pc.known[c.ID]
		if !ok || e.endpoint != c.EndpointID || e.failed && retryFailed {
			todo = append(todo, i)
		}
	}
	for id := range pc.known {
		if !alive[id] {
			delete(pc.known, id) // removed: forget it
		}
	}
	if len(todo) > 0 {
		pc.lookup(ctx, cs, todo)
	}
	for i := range cs {
		if e, ok := pc.known[cs[i].ID]; ok && e.endpoint == cs[i].EndpointID {
			cs[i].Port = e.port
		}
	}
}

// inspectParallel bounds the inspects in flight: after an agent restart
// every running container is new to the cache, and one by one a few
// hundred inspects held the first apply for seconds (fault case 1).
const inspectParallel = 16

func (pc *PortCache) lookup(ctx context.Context, cs []Container, todo []int) {
	sandboxes, errs := make([]string, len(todo)), make([]error, len(todo))
	var g errgroup.Group
	g.SetLimit(inspectParallel)
	for j, i := range todo {
		g.Go(func() error {
			sandboxes[j], errs[j] = pc.sandbox(ctx, cs[i])
			return nil // each container's error is its own
		})
	}
	_ = g.Wait() // the goroutines return nil
	var paths []string
	var asked []int
	for j, i := range todo {
		if errs[j] != nil {
			pc.failed(cs[i], errs[j])
			continue
		}
		paths = append(paths, sandboxes[j])
		asked = append(asked, i)
	}
	if len(paths) == 0 {
		return
	}
	ports, errs := pc.finder.Ports(paths)
	for j, i := range asked {
		c := cs[i]
		if errs[j] != nil || ports[j] <= 0 {
			err := errs[j]
			if err == nil {
				err = fmt.Errorf("bridge port: got ifindex %d", ports[j])
			}
			pc.failed(c, err)
			continue
		}
		pc.known[c.ID] = portEntry{endpoint: c.EndpointID, port: ports[j]}
		pc.log.Debug("bridge port found", "container", c.ShortID(), "address", c.Addr, "ifindex", ports[j], "netns", paths[j])
	}
}

// sandbox is the container's network namespace file, from Docker.
func (pc *PortCache) sandbox(ctx context.Context, c Container) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	info, err := pc.docker.ContainerInspect(ctx, c.ID)
	if err != nil {
		return "", fmt.Errorf("inspecting container: %w", err)
	}
	ns := info.NetworkSettings
	if ns == nil || ns.SandboxKey == "" {
		return "", fmt.Errorf("docker gives no network namespace (SandboxKey) for the container")
	}
	// Restarted between the list and the inspect: this sandbox is the
	// new endpoint's; the next reconcile sees that endpoint and asks again.
	if ep := ns.Networks[pc.network]; ep == nil || ep.EndpointID != c.EndpointID {
		return "", fmt.Errorf("container's endpoint on network %s changed since it was listed (restarted?)", pc.network)
	}
	return ns.SandboxKey, nil
}

func (pc *PortCache) failed(c Container, err error) {
	prev, had := pc.known[c.ID]
	pc.known[c.ID] = portEntry{endpoint: c.EndpointID, failed: true}
	msg := "bridge port of container not found; its address is bound to its MAC only, which a container with NET_RAW or NET_ADMIN can forge"
	if !c.Addr.IsValid() {
		msg = "bridge port of container without an address not found; its port cannot be closed"
	}
	if had && prev.failed && prev.endpoint == c.EndpointID {
		pc.log.Debug(msg, "container", c.ShortID(), "address", c.Addr, "err", err)
		return
	}
	pc.log.Warn(msg, "container", c.ShortID(), "address", c.Addr, "err", err)
}

// Known returns the cached port of a container, if any.
func (pc *PortCache) Known(id string) (port int, ok bool) {
	e, ok := pc.known[id]
	return e.port, ok
}

// Len is the number of containers cached.
func (pc *PortCache) Len() int { return len(pc.known) }
