package desired

import (
	"testing"

	"github.com/v6reg/v6reg/docker"
)

// FuzzBuildLabels: whatever a container's labels say, build gives a state
// the firewall takes (one container must never make the node's whole
// Apply fail), a closed container has no rules and no healthy
// registration, and the other checks of checkHostile hold. TestHostileInput
// runs the same checks over generated labels and Nomad meta.
func FuzzBuildLabels(f *testing.F) {
	f.Add("tcp/80 from @traefik; icmp from @ops", "tcp/5432 to service:postgres, job:p-db", "web:80:http", "open")
	f.Add("tcp/1-65535 from any", "udp/1000-3000 to 2001:db8::/32", "a:1", "")
	f.Add("tcp/80 form @x", "any to any", "bad", "default")
	f.Add("tcp/1-1024,2000-2001 from fd00:aa::1", "", "x:1:https;y:2", "open")
	want, _ := fwOf(Build(testInput(neighbour)), neighbour.ID)
	f.Fuzz(func(t *testing.T, ingress, egress, services, namespace string) {
		labels := map[string]string{"v6reg.ingress": ingress, "v6reg.egress": egress, "v6reg.services": services, docker.LabelJob: "p-x"}
		if namespace != "" {
			labels[docker.LabelNamespace] = namespace
		}
		c := labelContainer("f1", "fz", 10, labels)
		checkHostile(t, hostileCase{
			c: c, in: testInput(c, neighbour), source: "labels", anyOK: namespace == "open",
			keys: []string{`label "v6reg.ingress"`, `label "v6reg.egress"`, `label "v6reg.services"`},
		}, want)
	})
}
