package consulclient

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"

	consul "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-cleanhttp"
)

// registerer sends service registrations to the local agent itself,
// because the API client cannot say what v6reg must: that an HTTP check
// does not follow redirects. Consul's agent runs HTTP checks from the
// node, outside every container firewall, and by default follows a
// redirect anywhere: a tenant's container answering its health check with
// "302 Location: http://169.254.169.254/..." or "http://127.0.0.1:8500/..."
// would make the node's agent fetch that URL and keep the start of the
// answer as the check's output (and its status a port scanner).
// DisableRedirects (Consul 1.11 and later) makes the redirect the check's
// answer; github.com/hashicorp/consul/api has no field for it.
type registerer struct {
	http  *http.Client
	url   string // of /v1/agent/service/register, with the query the API client would send
	token string
	auth  *consul.HttpBasicAuth
}

// registration is an AgentServiceRegistration whose checks can say
// DisableRedirects: the outer fields hide the embedded ones in JSON.
type registration struct {
	*consul.AgentServiceRegistration
	Check  *check   `json:",omitempty"`
	Checks []*check // null when none, as the API client sends it
}

type check struct {
	*consul.AgentServiceCheck
	DisableRedirects bool `json:",omitempty"`
}

// newRegisterer reads cfg as consul.NewClient would (address with an
// optional unix:// socket, scheme, TLS, token, basic auth, datacenter,
// namespace, partition), before NewClient rewrites it.
func newRegisterer(cfg consul.Config) (*registerer, error) {
	scheme, host := cfg.Scheme, cfg.Address
	tr := cleanhttp.DefaultTransport()
	if path, ok := strings.CutPrefix(host, "unix://"); ok {
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", path)
		}
		host = "localhost"
	}
	hc, err := consul.NewHttpClient(tr, cfg.TLSConfig)
	if err != nil {
		return nil, err
	}
	if scheme == "" {
		scheme = "http"
	}
	q := url.Values{"replace-existing-checks": {"true"}}
	for k, v := range map[string]string{"dc": cfg.Datacenter, "ns": cfg.Namespace, "partition": cfg.Partition} {
		if v != "" {
			q.Set(k, v)
		}
	}
	u := url.URL{Scheme: scheme, Host: host, Path: "/v1/agent/service/register", RawQuery: q.Encode()}
	return &registerer{http: hc, url: u.String(), token: cfg.Token, auth: cfg.HttpAuth}, nil
}

func (r *registerer) register(ctx context.Context, reg *consul.AgentServiceRegistration) error {
	noRedirects := func(c *consul.AgentServiceCheck) *check {
		return &check{AgentServiceCheck: c, DisableRedirects: c.HTTP != ""}
	}
	body := registration{AgentServiceRegistration: reg}
	if reg.Check != nil {
		body.Check = noRedirects(reg.Check)
	}
	for _, c := range reg.Checks {
		if c != nil {
			body.Checks = append(body.Checks, noRedirects(c))
		}
	}
	b, err := json.Marshal(body)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, r.url, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if r.token != "" {
		req.Header.Set("X-Consul-Token", r.token)
	}
	if r.auth != nil {
		req.SetBasicAuth(r.auth.Username, r.auth.Password)
	}
	resp, err := r.http.Do(req)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("consul agent answered %s: %s", resp.Status, bytes.TrimSpace(msg))
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	return nil
}
