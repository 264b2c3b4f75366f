// Package consulclient adapts the Consul API client to what v6reg asks of
// the local Consul agent: the registrar (services), the peer watches
// (health and catalog queries) and the status API (checks).
package consulclient

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"time"

	consul "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-cleanhttp"
)

// Client adapts *consul.Client to ConsulAPI. Build it with New: the
// registrations go through reg, which New sets up.
type Client struct {
	C   *consul.Client
	reg *registerer
}

// Services lists the local agent's services; see the users' interfaces.
func (c Client) Services(ctx context.Context) (map[string]*consul.AgentService, error) {
	return c.C.Agent().ServicesWithFilterOpts("", (&consul.QueryOptions{}).WithContext(ctx))
}

// Register registers reg with the local agent, replacing its checks
// so a changed check does not leave the old one behind. An HTTP check
// never follows a redirect (see registerer).
func (c Client) Register(ctx context.Context, reg *consul.AgentServiceRegistration) error {
	if c.reg == nil {
		return errors.New("consulclient: Client built without consulclient.New; its registrations would let HTTP checks follow redirects")
	}
	return c.reg.register(ctx, reg)
}

// Deregister removes the service id from the local agent.
func (c Client) Deregister(ctx context.Context, id string) error {
	return c.C.Agent().ServiceDeregisterOpts(id, (&consul.QueryOptions{}).WithContext(ctx))
}

// HealthService runs one blocking health query (up to 5 minutes, stale
// reads allowed); see the users' interfaces.
func (c Client) HealthService(ctx context.Context, service, tag string, waitIndex uint64) ([]*consul.ServiceEntry, uint64, error) {
	q := (&consul.QueryOptions{WaitIndex: waitIndex, WaitTime: 5 * time.Minute, AllowStale: true}).WithContext(ctx)
	entries, meta, err := c.C.Health().Service(service, tag, false, q)
	if err != nil {
		return nil, 0, err
	}
	return entries, meta.LastIndex, nil
}

// Checks lists the local agent's checks; see the users' interfaces. All of them, in
// one call: a node's agent holds only its own node's checks, and a filter
// expression on the service ID prefix would need the node name quoted for
// both bexpr and a regexp. The caller keeps the ones v6reg owns.
func (c Client) Checks(ctx context.Context) (map[string]*consul.AgentCheck, error) {
	return c.C.Agent().ChecksWithFilterOpts("", (&consul.QueryOptions{}).WithContext(ctx))
}

// New builds a client from the agent's Consul settings: one short
// connection per call (the registrar's and the status API's calls are
// few and far between).
func New(address, token, caFile, certFile, keyFile, datacenter string) (Client, error) {
	cfg := config(consul.DefaultNonPooledConfig(), address, token, caFile, certFile, keyFile, datacenter)
	// The registerer reads the settings as given: NewClient rewrites a
	// unix:// address in cfg.
	reg, err := newRegisterer(*cfg)
	if err != nil {
		return Client{}, fmt.Errorf("consul client: %w", err)
	}
	c, err := consul.NewClient(cfg)
	if err != nil {
		return Client{}, fmt.Errorf("consul client: %w", err)
	}
	return Client{C: c, reg: reg}, nil
}

// config fills cfg with the agent's Consul settings; address may carry
// the scheme.
func config(cfg *consul.Config, address, token, caFile, certFile, keyFile, datacenter string) *consul.Config {
	cfg.Address = address
	cfg.Token = token
	cfg.Datacenter = datacenter
	cfg.TLSConfig = consul.TLSConfig{CAFile: caFile, CertFile: certFile, KeyFile: keyFile}
	if strings.HasPrefix(address, "https://") {
		cfg.Scheme = "https"
		cfg.Address = strings.TrimPrefix(address, "https://")
	} else {
		cfg.Address = strings.TrimPrefix(address, "http://")
	}
	return cfg
}

// CatalogIndex runs one blocking query on /v1/catalog/services (up to 5
// minutes, stale reads allowed) and returns the next index.
func (c Client) CatalogIndex(ctx context.Context, waitIndex uint64) (uint64, error) {
	q := (&consul.QueryOptions{WaitIndex: waitIndex, WaitTime: 5 * time.Minute, AllowStale: true}).WithContext(ctx)
	_, meta, err := c.C.Catalog().Services(q)
	if err != nil {
		return 0, err
	}
	return meta.LastIndex, nil
}

// NewWatch is a Consul client for the peer watches: pooled
// HTTP/1.1 connections (a blocking query holds one), at most conns of
// them to Consul, counted. It returns the client and a function that
// reports the connections open now.
func NewWatch(address, token, caFile, certFile, keyFile, datacenter string, conns int) (*consul.Client, func() int64, error) {
	var open atomic.Int64
	tr := cleanhttp.DefaultPooledTransport()
	tr.MaxConnsPerHost = conns
	tr.MaxIdleConnsPerHost = conns
	tr.ForceAttemptHTTP2 = false
	dial := tr.DialContext
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		open.Add(1)
		return &countedConn{Conn: c, open: &open}, nil
	}
	cfg := consul.DefaultConfig()
	cfg.Transport = tr
	c, err := consul.NewClient(config(cfg, address, token, caFile, certFile, keyFile, datacenter))
	if err != nil {
		return nil, nil, fmt.Errorf("consul watch client: %w", err)
	}
	return c, open.Load, nil
}

// countedConn counts itself out of open when closed (once).
type countedConn struct {
	net.Conn
	open   *atomic.Int64
	closed atomic.Bool
}

func (c *countedConn) Close() error {
	if c.closed.CompareAndSwap(false, true) {
		c.open.Add(-1)
	}
	return c.Conn.Close()
}
