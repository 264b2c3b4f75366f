package peers

import (
	"errors"
	"fmt"
	"strings"
)

// Kind is what a Key names in Consul.
type Kind uint8

// The kinds of Consul-backed peers.
const (
	// Service is service:NAMESPACE/NAME: the instances of NAME that
	// v6reg registered for containers of NAMESPACE.
	Service Kind = iota + 1
	// Job is job:NAMESPACE/JOB: every container of JOB, through the
	// v6reg-jobs service.
	Job
)

func (k Kind) String() string {
	switch k {
	case Service:
		return "service"
	case Job:
		return "job"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Key names a Consul-backed peer set. Its String form is also the name of
// its set in the firewall state and in the persisted last-known state.
type Key struct {
	Kind      Kind
	Namespace string
	Name      string
}

// ServiceKey is the key of a service: peer written in a policy of
// namespace: NAME is NAME as registered by a container of the same
// namespace, NS/NAME is NAME as registered in NS (the policy checked that
// the namespace may use NS's services).
func ServiceKey(namespace, name string) Key {
	if ns, n, ok := strings.Cut(name, "/"); ok {
		return Key{Kind: Service, Namespace: ns, Name: n}
	}
	return Key{Kind: Service, Namespace: namespace, Name: name}
}

// JobKey is the key of a job: peer written in a policy of namespace.
func JobKey(namespace, job string) Key { return Key{Kind: Job, Namespace: namespace, Name: job} }

func (k Key) String() string { return k.Kind.String() + ":" + k.Namespace + "/" + k.Name }

// ParseKey reads the String form.
func ParseKey(s string) (Key, error) {
	kind, rest, ok := strings.Cut(s, ":")
	var k Key
	switch kind {
	case "service":
		k.Kind = Service
	case "job":
		k.Kind = Job
	default:
		ok = false
	}
	if ok {
		k.Namespace, k.Name, ok = strings.Cut(rest, "/")
	}
	if !ok || k.Namespace == "" || k.Name == "" {
		return Key{}, fmt.Errorf("peer key %q: %w", s, errBadKey)
	}
	return k, nil
}

var errBadKey = errors.New("want service:NAMESPACE/NAME or job:NAMESPACE/NAME")

// IsKeyName says whether a firewall peer set name is a Key's (a
// Consul-backed set) rather than an operator set or a literal list.
func IsKeyName(name string) bool {
	return strings.HasPrefix(name, "service:") || strings.HasPrefix(name, "job:")
}
