package integration

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/v6reg/v6reg/consulclient"
	"github.com/v6reg/v6reg/integration/consul"
	"github.com/v6reg/v6reg/registrar"
)

// TestHTTPCheckFollowsNoRedirect: Consul's agent runs a container's HTTP
// health check from the node, outside every container firewall. A
// container that answers its check with a redirect must not make the
// agent fetch the redirect's target (the node's metadata service, a
// node-local API, another tenant's container): v6reg registers HTTP
// checks with DisableRedirects, and the redirect itself is the check's
// answer (critical). The positive control registers the same check as the
// Consul API client would by itself: the agent follows the redirect.
func TestHTTPCheckFollowsNoRedirect(t *testing.T) {
	ca := consul.StartT(t, 28817)
	cc, err := consulclient.New(ca.HTTPAddr, "", "", "", "", "")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()

	var secretHits atomic.Int64 // what the redirect points at
	secret := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		secretHits.Add(1)
		_, _ = w.Write([]byte("node secret"))
	}))
	defer secret.Close()
	tenant := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, secret.URL+"/latest/meta-data/", http.StatusFound)
	}))
	defer tenant.Close()
	hostport := strings.TrimPrefix(tenant.URL, "http://")
	i := strings.LastIndexByte(hostport, ':')
	port, _ := strconv.Atoi(hostport[i+1:])

	reg := func(id string) *consulapi.AgentServiceRegistration {
		r := registrar.Registration{ID: id, Name: "web", Addr: netip.MustParseAddr(hostport[:i]), Port: port,
			Check: registrar.Check{Kind: "http", Path: "/"}}.ToConsul("test", "0")
		r.Check.Interval = "500ms" // the first run comes within one interval
		return r
	}
	// waitOutput waits until the check of service id has run, and returns
	// its output.
	waitOutput := func(id string) string {
		t.Helper()
		for {
			checks, err := cc.C.Agent().ChecksWithFilterOpts(fmt.Sprintf("ServiceID == %q", id), (&consulapi.QueryOptions{}).WithContext(ctx))
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range checks {
				if c.Output != "" {
					return c.Status + ": " + c.Output
				}
			}
			select {
			case <-ctx.Done():
				t.Fatalf("the check of %s never ran", id)
			case <-time.After(50 * time.Millisecond):
			}
		}
	}

	if err := cc.Register(ctx, reg("v6reg-test-web")); err != nil {
		t.Fatal(err)
	}
	out := waitOutput("v6reg-test-web")
	time.Sleep(time.Second) // two more runs
	if n := secretHits.Load(); n != 0 || !strings.HasPrefix(out, consulapi.HealthCritical) {
		t.Fatalf("v6reg's check: the agent fetched the redirect's target %d times; check %q, want critical on the redirect itself", n, out)
	}
	t.Logf("v6reg's check: %s", out)

	// Control: the API client's own registration follows the redirect.
	if err := cc.C.Agent().ServiceRegisterOpts(reg("control-web"), consulapi.ServiceRegisterOpts{ReplaceExistingChecks: true}.WithContext(ctx)); err != nil {
		t.Fatal(err)
	}
	out = waitOutput("control-web")
	if secretHits.Load() == 0 {
		t.Fatalf("control: the agent never followed the redirect (check %q): this test could not see the hole it guards", out)
	}
	t.Logf("control: the agent followed the redirect %d times (%s)", secretHits.Load(), out)
}
