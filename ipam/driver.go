package ipam

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
)

// Protocol constants of libnetwork's remote IPAM driver API.
const (
	pluginContentType = "application/vnd.docker.plugins.v1.2+json"
	// OptRequestAddressType marks a RequestAddress for the gateway.
	OptRequestAddressType = "RequestAddressType"
	// GatewayRequestType is the value of OptRequestAddressType for the gateway.
	GatewayRequestType = "com.docker.network.gateway"
	// OptMACAddress is where Docker puts the endpoint MAC when it sends one.
	OptMACAddress = "com.docker.network.endpoint.macaddress"
	// OptEndpointName is where Docker 29+ puts the endpoint's name (the
	// container's name); 28 sends no options at all.
	OptEndpointName = "com.docker.network.endpoint.name"

	localAddressSpace  = "v6reg-local"
	globalAddressSpace = "v6reg-global"
	maxRequestBytes    = 1 << 20
)

// Request and response bodies of the protocol.
type (
	requestPoolRequest struct {
		AddressSpace string
		Pool         string
		SubPool      string
		Options      map[string]string
		V6           bool
	}
	requestPoolResponse struct {
		PoolID string
		Pool   string
		Data   map[string]string
	}
	releasePoolRequest struct {
		PoolID string
	}
	requestAddressRequest struct {
		PoolID  string
		Address string
		Options map[string]string
	}
	requestAddressResponse struct {
		Address string
		Data    map[string]string
	}
	releaseAddressRequest struct {
		PoolID  string
		Address string
	}
	capabilitiesResponse struct {
		RequiresMACAddress    bool
		RequiresRequestReplay bool
	}
	addressSpacesResponse struct {
		LocalDefaultAddressSpace  string
		GlobalDefaultAddressSpace string
	}
	errorResponse struct {
		Err string
	}
)

// Driver serves the remote IPAM protocol for the node prefix and the IPv4
// egress subnet.
type Driver struct {
	alloc *Allocator
	v6    netip.Prefix
	v4    netip.Prefix // invalid when not configured
	log   *slog.Logger
}

// NewDriver returns the driver for cfg (after WithDefaults) on alloc.
func NewDriver(alloc *Allocator, cfg Config, log *slog.Logger) *Driver {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Driver{alloc: alloc, v6: cfg.Prefix, v4: cfg.IPv4Subnet, log: log}
}

// Handler returns the HTTP handler of the plugin socket.
func (d *Driver) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /Plugin.Activate", func(w http.ResponseWriter, _ *http.Request) {
		d.log.Info("ipam driver activated by docker")
		reply(w, map[string][]string{"Implements": {"IpamDriver"}})
	})
	mux.HandleFunc("POST /IpamDriver.GetCapabilities", func(w http.ResponseWriter, _ *http.Request) {
		// The store persists every lease, so there is nothing for Docker to
		// replay on its restart, and the MAC is only a hint.
		reply(w, capabilitiesResponse{RequiresMACAddress: false, RequiresRequestReplay: false})
	})
	mux.HandleFunc("POST /IpamDriver.GetDefaultAddressSpaces", func(w http.ResponseWriter, _ *http.Request) {
		reply(w, addressSpacesResponse{LocalDefaultAddressSpace: localAddressSpace, GlobalDefaultAddressSpace: globalAddressSpace})
	})
	handle(mux, d, "IpamDriver.RequestPool", d.requestPool)
	handle(mux, d, "IpamDriver.ReleasePool", d.releasePool)
	handle(mux, d, "IpamDriver.RequestAddress", d.requestAddress)
	handle(mux, d, "IpamDriver.ReleaseAddress", d.releaseAddress)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		d.log.Warn("ipam driver: unknown method", "path", r.URL.Path)
		replyErr(w, http.StatusNotFound, fmt.Errorf("v6reg ipam driver does not implement %s %s", r.Method, r.URL.Path))
	})
	return mux
}

// handle decodes the body into Req, logs the raw request (so operators see
// exactly what their Docker version sends), and writes the answer or
// {"Err": ...}, which Docker shows to the user.
func handle[Req, Resp any](mux *http.ServeMux, d *Driver, method string, fn func(Req) (Resp, error)) {
	mux.HandleFunc("POST /"+method, func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, maxRequestBytes))
		if err != nil {
			replyErr(w, http.StatusBadRequest, fmt.Errorf("%s: reading request: %w", method, err))
			return
		}
		d.log.Debug("ipam driver request", "method", method, "body", string(body))
		req, err := decodeRequest[Req](body)
		if err != nil {
			d.log.Warn("ipam driver: bad request", "method", method, "err", err)
			replyErr(w, http.StatusBadRequest, fmt.Errorf("v6reg %s: %w", method, err))
			return
		}
		resp, err := fn(req)
		if err != nil {
			d.log.Warn("ipam driver: request refused", "method", method, "body", string(body), "err", err)
			replyErr(w, http.StatusInternalServerError, fmt.Errorf("v6reg %s: %w", method, err))
			return
		}
		reply(w, resp)
	})
}

// errEmptyBody is what an IPAM call without a body gets. Every method
// routed through handle carries a body; an empty one is how a call arrives
// that Docker retried after v6reg was stopped in the middle of it: moby's
// plugin client (pkg/plugins, callWithRetry) sends the same, already
// drained, request buffer again. Nothing says which pool or address it
// meant, so the call fails with this explanation instead of a confusing
// "unknown pool". The container start fails and its restart policy (or
// Nomad) starts it again; a lost ReleaseAddress is swept by the agent's
// next full reconcile with Docker.
var errEmptyBody = errors.New("empty request body: Docker resent a call that a v6reg restart cut off, without its body (a known behaviour of Docker's plugin client); the call fails: a container start is retried by its restart policy or Nomad, a lost release is swept by the agent's next full reconcile; nothing to do unless it repeats without restarts")

func decodeRequest[T any](body []byte) (T, error) {
	var v T
	if len(strings.TrimSpace(string(body))) == 0 {
		return v, errEmptyBody
	}
	if err := json.Unmarshal(body, &v); err != nil {
		return v, fmt.Errorf("request body is not the JSON the protocol defines: %w", err)
	}
	return v, nil
}

func reply(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", pluginContentType)
	_ = json.NewEncoder(w).Encode(v)
}

func replyErr(w http.ResponseWriter, status int, err error) {
	w.Header().Set("Content-Type", pluginContentType)
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(errorResponse{Err: err.Error()})
}

func (d *Driver) requestPool(req requestPoolRequest) (requestPoolResponse, error) {
	want, family, flag := d.v6, "IPv6 node prefix", "--subnet"
	if !req.V6 {
		want, family = d.v4, "IPv4 egress subnet"
		if !want.IsValid() {
			return requestPoolResponse{}, errors.New("no IPv4 egress subnet is configured in v6reg, but Docker asks for an IPv4 pool for every bridge network: set the ipv4 subnet in the v6reg config")
		}
	}
	if req.Pool != "" {
		got, err := netip.ParsePrefix(req.Pool)
		if err != nil {
			return requestPoolResponse{}, fmt.Errorf("pool %q is not a prefix: %w", req.Pool, err)
		}
		if got != want {
			return requestPoolResponse{}, fmt.Errorf("requested pool %s differs from the %s %s that v6reg serves: create the network with %s %s or change the v6reg config", got, family, want, flag, want)
		}
	}
	if req.SubPool != "" && req.SubPool != want.String() {
		return requestPoolResponse{}, fmt.Errorf("sub-pool (--ip-range) %s is not supported: v6reg allocates from the whole %s %s; remove --ip-range", req.SubPool, family, want)
	}
	d.log.Info("ipam pool requested", "pool", want, "v6", req.V6, "options", req.Options)
	return requestPoolResponse{PoolID: want.String(), Pool: want.String(), Data: map[string]string{}}, nil
}

func (d *Driver) releasePool(req releasePoolRequest) (struct{}, error) {
	// Leases outlive the network object: if the network is recreated,
	// hold-downs and leases still apply.
	d.log.Info("ipam pool released", "pool", req.PoolID)
	return struct{}{}, nil
}

func (d *Driver) requestAddress(req requestAddressRequest) (requestAddressResponse, error) {
	bits, err := d.bits(req.PoolID)
	if err != nil {
		return requestAddressResponse{}, err
	}
	var want netip.Addr
	if req.Address != "" {
		if want, err = parseAddr(req.Address); err != nil {
			return requestAddressResponse{}, err
		}
	}
	if req.Options[OptRequestAddressType] == GatewayRequestType {
		gw, err := d.alloc.Gateway(req.PoolID, want)
		if err != nil {
			return requestAddressResponse{}, err
		}
		d.log.Info("ipam gateway requested", "pool", req.PoolID, "addr", gw)
		return requestAddressResponse{Address: netip.PrefixFrom(gw, bits).String(), Data: map[string]string{}}, nil
	}
	l, err := d.alloc.RequestFor(req.PoolID, want, req.Options[OptMACAddress], req.Options[OptEndpointName])
	if err != nil {
		return requestAddressResponse{}, err
	}
	d.log.Info("ipam address leased", "pool", req.PoolID, "addr", l.Addr, "requested", req.Address, "options", req.Options)
	return requestAddressResponse{Address: netip.PrefixFrom(l.Addr, bits).String(), Data: map[string]string{}}, nil
}

func (d *Driver) releaseAddress(req releaseAddressRequest) (struct{}, error) {
	if _, err := d.bits(req.PoolID); err != nil {
		return struct{}{}, err
	}
	a, err := parseAddr(req.Address)
	if err != nil {
		return struct{}{}, err
	}
	if err := d.alloc.Release(req.PoolID, a); err != nil {
		return struct{}{}, err
	}
	d.log.Info("ipam address released into hold-down", "pool", req.PoolID, "addr", a)
	return struct{}{}, nil
}

func (d *Driver) bits(poolID string) (int, error) {
	switch {
	case poolID == d.v6.String():
		return d.v6.Bits(), nil
	case d.v4.IsValid() && poolID == d.v4.String():
		return d.v4.Bits(), nil
	}
	return 0, fmt.Errorf("pool %q: %w: v6reg serves %s and %v; was the network created with another v6reg config?", poolID, ErrUnknownPool, d.v6, d.v4)
}

// parseAddr accepts an address with or without a prefix length (Docker
// sends plain addresses, but be lenient about CIDR form).
func parseAddr(s string) (netip.Addr, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Addr(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("address %q is not an IP address: %w", s, err)
	}
	if a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("address %q has a zone: send it without %%%s", s, a.Zone())
	}
	return a.Unmap(), nil
}

// Listen opens the plugin socket at path, replacing a stale one left by a
// crashed agent, readable by root only.
func Listen(path string) (net.Listener, error) {
	// Docker's plugin directory is shared with other plugins and dockerd
	// makes it 0755 too; the socket itself is 0600.
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil { //nolint:gosec // G301: see above
		return nil, fmt.Errorf("plugin socket directory: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("stale plugin socket: %w", err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("plugin socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		_ = ln.Close()
		return nil, fmt.Errorf("plugin socket mode: %w", err)
	}
	return ln, nil
}
