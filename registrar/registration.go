// Package registrar keeps the local Consul agent holding exactly the
// registrations v6reg wants for this node's containers, and defines what
// such a registration is: its ID, meta and checks, which the peer watches
// of every node read back to tell v6reg's registrations from others.
package registrar

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"strconv"

	consul "github.com/hashicorp/consul/api"
)

// Meta keys on every registration v6reg owns.
const (
	MetaOwner     = "v6reg_node" // the node that registered it: only that node removes it
	MetaHash      = "v6reg_hash" // of the desired registration, to see changes without diffing checks
	MetaContainer = "v6reg_container"
	MetaAlloc     = "nomad_alloc"
	MetaJob       = "nomad_job"
	MetaTask      = "nomad_task"
	MetaNamespace = "nomad_namespace"
	// MetaPrefix is the registering node's prefix: a peer address outside
	// it is refused, so a registration cannot claim another node's address.
	MetaPrefix = "v6reg_prefix"

	// JobsService carries one instance per container of a job, tagged
	// "job=NAMESPACE/JOB", so that job:NAME peers resolve on every node.
	JobsService = "v6reg-jobs"
	// PolicyErrorService carries containers whose policy is refused and
	// that declare no service of their own, so the error shows in Consul.
	PolicyErrorService = "v6reg-policy-errors"
)

// Registration is one Consul service v6reg wants registered.
type Registration struct {
	ID    string
	Name  string
	Addr  netip.Addr
	Port  int
	Tags  []string
	Meta  map[string]string
	Check Check
}

// Check is the health check of a registration.
type Check struct {
	Kind string // "tcp", "http", "https", "critical" (policy error), "" (none)
	Path string // for http(s)
	// Notes is shown in the Consul UI; for "critical" it is the policy error.
	Notes string
}

// JobTag is the tag of a job's entries in JobsService.
func JobTag(namespace, job string) string { return "job=" + namespace + "/" + job }

// ServiceID is the ID of a registration v6reg owns: prefix, node,
// container, name and port, so two nodes or two containers never collide.
func ServiceID(prefix, node, containerID, name string, port int) string {
	short := containerID
	if len(short) > 12 {
		short = short[:12]
	}
	return fmt.Sprintf("%s-%s-%s-%s-%d", prefix, node, short, name, port)
}

// Hash identifies the registration's content; Consul keeps it in meta,
// so a changed registration is seen without comparing checks.
//
// It covers how the registration is sent too, where that changed: an
// http(s) check is registered with DisableRedirects (consulclient) since
// form 2, and the new form changes its hash so that an upgraded agent
// registers again the checks an older one left following redirects.
// Other registrations hash as they always did (no re-registration).
func (r Registration) Hash() string {
	form := 0
	if r.Check.Kind == "http" || r.Check.Kind == "https" {
		form = 2
	}
	b, _ := json.Marshal(struct {
		Registration
		Form int `json:",omitempty"`
	}{r, form})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

// ToConsul is the registration as the local agent takes it, owned by
// node, with its hash (Hash) in meta.
func (r Registration) ToConsul(node, hash string) *consul.AgentServiceRegistration {
	meta := map[string]string{MetaOwner: node, MetaHash: hash}
	for k, v := range r.Meta {
		meta[k] = v
	}
	reg := &consul.AgentServiceRegistration{
		ID: r.ID, Name: r.Name, Address: r.Addr.String(), Port: r.Port,
		Tags: r.Tags, Meta: meta,
	}
	hostport := net.JoinHostPort(r.Addr.String(), strconv.Itoa(r.Port))
	c := &consul.AgentServiceCheck{CheckID: r.ID + "-check", Interval: "10s", Timeout: "2s", Notes: r.Check.Notes}
	switch r.Check.Kind {
	case "tcp":
		c.Name = "tcp " + hostport
		c.TCP = hostport
	case "http", "https":
		c.Name = r.Check.Kind + " " + hostport + r.Check.Path
		c.HTTP = r.Check.Kind + "://" + hostport + r.Check.Path
		c.TLSSkipVerify = r.Check.Kind == "https"
	case "critical":
		// A TTL check that is never passed: it stays critical with the
		// error as its notes until the policy is fixed.
		c = &consul.AgentServiceCheck{CheckID: r.ID + "-policy", Name: "v6reg policy", TTL: "87600h", Status: consul.HealthCritical, Notes: r.Check.Notes}
	default:
		c = nil
	}
	reg.Check = c
	return reg
}
