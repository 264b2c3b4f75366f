// Package docker is the agent's Docker source: the containers on the
// v6reg network as the engine reports them (list, inspect, events), a
// view of them kept by events, and each container's bridge port.
package docker

import (
	"github.com/v6reg/v6reg/internal/backoff"

	"context"

	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	nettypes "github.com/docker/docker/api/types/network"
)

// API is the part of the Docker engine API the agent reads; the real
// *client.Client satisfies it.
type API interface {
	ContainerList(ctx context.Context, options container.ListOptions) ([]container.Summary, error)
	// ContainerInspect is called once per new endpoint, for the
	// container's network namespace (NetworkSettings.SandboxKey).
	ContainerInspect(ctx context.Context, containerID string) (container.InspectResponse, error)
	Events(ctx context.Context, options events.ListOptions) (<-chan events.Message, <-chan error)
}

// Label and env names that Nomad's docker driver sets.
const (
	LabelNomadAlloc     = "com.hashicorp.nomad.alloc_id"
	LabelNomadTask      = "com.hashicorp.nomad.task_name" // only with extra_labels
	LabelNomadJob       = "com.hashicorp.nomad.job_name"  // only with extra_labels
	LabelNomadNamespace = "com.hashicorp.nomad.namespace" // only with extra_labels
	LabelNomadGroup     = "com.hashicorp.nomad.task_group_name"

	// Labels for containers started without Nomad.
	LabelJob       = "v6reg.job"
	LabelNamespace = "v6reg.namespace"
)

// Container is what the agent knows of one running container on the v6reg
// network, read from the Docker engine.
type Container struct {
	ID    string
	Name  string
	Addr  netip.Addr // IPv6 on the v6reg network; invalid if it has none
	Addr4 netip.Addr
	// MAC is the endpoint's MAC: the firewall binds Addr to it, so a
	// container cannot send as another on the same bridge.
	MAC net.HardwareAddr
	// EndpointID is the container's endpoint on the network: new at every
	// start, so it tells when Port must be looked up again.
	EndpointID string
	// Port is the host-side veth ifindex of the container on the bridge,
	// 0 if unknown (see PortCache): the firewall binds Addr to it.
	Port   int
	Labels map[string]string
	// AllocID is the Nomad allocation (empty for containers without Nomad).
	AllocID string
	// Task is the Nomad task name, from the container name "<task>-<alloc>".
	Task    string
	Created time.Time

	// Rev changes whenever the View stores a different version of the
	// container (0: not from a View), so that the agent evaluates its
	// policy again only when it changed.
	Rev uint64
}

// ShortID is the 12-character container ID Docker shows.
func (c Container) ShortID() string { return ShortID(c.ID) }

// ShortID is the 12-character form of a container ID, as Docker shows it.
func ShortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// CallTimeout bounds one call to the engine (a list, an inspect), so that
// a hung engine delays the agent instead of stopping it.
const CallTimeout = 30 * time.Second

// List reads the running containers attached to network: all of them, or
// those of ids. One list call carries names, labels and addresses, so a
// pass costs one round trip to Docker however many containers it reads.
//
// A list, not an inspect, even for one container: Docker answers a list
// from its in-memory view, while an inspect takes the container's lock,
// which its start holds until the container runs. The network connect
// event comes during that start; inspecting on it held a whole pass, and
// every container of it, until that start ended (TestBenchEndToEnd, 4
// concurrent starters on a real dockerd 20.10, bursts of 100: firewall
// medians 235-312 ms with an inspect per event, 41-51 ms with lists).
func List(ctx context.Context, api API, network string, ids ...string) ([]Container, error) {
	f := filters.NewArgs(filters.Arg("network", network))
	for _, id := range ids {
		f.Add("id", id)
	}
	list, err := api.ContainerList(ctx, container.ListOptions{Filters: f})
	if err != nil {
		return nil, fmt.Errorf("listing containers on network %s: %w", network, err)
	}
	out := make([]Container, 0, len(list))
	for _, s := range list {
		name := ""
		if len(s.Names) > 0 {
			name = s.Names[0]
		}
		var ep *nettypes.EndpointSettings
		if s.NetworkSettings != nil {
			ep = s.NetworkSettings.Networks[network]
		}
		out = append(out, NewContainer(s.ID, name, s.Labels, time.Unix(s.Created, 0), ep))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// NewContainer is what the agent keeps of a container, from what a list
// or an inspect says of it (the same fields either way, so that a resync's
// list finds no difference with what events brought).
func NewContainer(id, name string, labels map[string]string, created time.Time, ep *nettypes.EndpointSettings) Container {
	c := Container{ID: id, Name: strings.TrimPrefix(name, "/"), Labels: labels, Created: created}
	if ep != nil {
		c.Addr, _ = netip.ParseAddr(ep.GlobalIPv6Address)
		c.Addr4, _ = netip.ParseAddr(ep.IPAddress)
		c.MAC, _ = net.ParseMAC(ep.MacAddress)
		c.EndpointID = ep.EndpointID
	}
	c.AllocID = labels[LabelNomadAlloc]
	if c.AllocID != "" {
		c.Task = labels[LabelNomadTask]
		if c.Task == "" {
			// Nomad names task containers "<task>-<alloc id>".
			c.Task = strings.TrimSuffix(c.Name, "-"+c.AllocID)
		}
	}
	return c
}

// Sink receives what Watch sees: a container an event names
// (the agent reads that one container back), or a relist request when events
// may have been missed (the agent lists every container).
type Sink interface {
	ContainerEvent(id, reason string)
	RelistEvent(reason string)
}

// Watch follows the engine's event stream and tells sink of every
// event that can change the desired state. It never returns before ctx is
// done: when the stream breaks it reconnects with backoff, resumes from the
// last event it saw, and asks for a full relist (events lost in the gap are
// covered by the relist, not replayed one by one).
//
// after is time.After outside tests (a seam, so tests see the backoff
// without waiting it out).
func Watch(ctx context.Context, api API, network string, log *slog.Logger, sink Sink, onError func(), after func(time.Duration) <-chan time.Time) {
	since := time.Now()
	retry := backoff.New(250*time.Millisecond, 10*time.Second)
	for ctx.Err() == nil {
		f := filters.NewArgs(
			filters.Arg("type", string(events.ContainerEventType)),
			filters.Arg("type", string(events.NetworkEventType)),
			filters.Arg("event", "start"),
			filters.Arg("event", "die"),
			filters.Arg("event", "destroy"),
			filters.Arg("event", "connect"),
			filters.Arg("event", "disconnect"),
		)
		sub, cancel := context.WithCancel(ctx)
		msgs, errs := api.Events(sub, events.ListOptions{
			Since:   fmt.Sprintf("%d.%09d", since.Unix(), since.Nanosecond()),
			Filters: f,
		})
		sink.RelistEvent("docker: (re)subscribed to events")
		err := func() error {
			for {
				select {
				case <-ctx.Done():
					return ctx.Err()
				case m, ok := <-msgs:
					if !ok {
						// A closed message channel is a broken stream too;
						// reading on would spin on zero values.
						return errors.New("event stream closed")
					}
					if m.TimeNano > 0 {
						since = time.Unix(0, m.TimeNano)
					}
					retry.Reset()
					id := m.Actor.ID
					if m.Type == events.NetworkEventType {
						if m.Actor.Attributes["name"] != network {
							continue
						}
						id = m.Actor.Attributes["container"]
					}
					if id == "" {
						// Nothing names the container: only a relist tells.
						sink.RelistEvent("docker: " + string(m.Type) + " " + string(m.Action) + " without a container")
						continue
					}
					sink.ContainerEvent(id, "docker: "+string(m.Type)+" "+string(m.Action))
				case err, ok := <-errs:
					if err == nil || !ok {
						err = errors.New("event stream ended")
					}
					return err
				}
			}
		}()
		cancel()
		if ctx.Err() != nil {
			return
		}
		onError()
		d := retry.Next()
		log.Warn("docker event stream broke; reconnecting", "err", err, "retry_in", d)
		select {
		case <-ctx.Done():
			return
		case <-after(d):
		}
	}
}
