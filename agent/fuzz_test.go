package agent

import (
	"testing"
	"time"
)

// FuzzBuildLabels: whatever a container's labels say, build gives a state
// the firewall takes (one container must never make the node's whole
// Apply fail), and a closed container has no rules and no healthy
// registration.
func FuzzBuildLabels(f *testing.F) {
	f.Add("tcp/80 from @traefik; icmp from @ops", "tcp/5432 to service:postgres, job:p-db", "web:80:http", "open")
	f.Add("tcp/1-65535 from any", "udp/1000-3000 to 2001:db8::/32", "a:1", "")
	f.Add("tcp/80 form @x", "any to any", "bad", "default")
	f.Add("tcp/1-1024,2000-2001 from fd00:aa::1", "", "x:1:https;y:2", "open")
	f.Fuzz(func(t *testing.T, ingress, egress, services, namespace string) {
		labels := map[string]string{"v6reg.ingress": ingress, "v6reg.egress": egress, "v6reg.services": services, "v6reg.job": "p-x"}
		if namespace != "" {
			labels[labelNamespace] = namespace
		}
		c := labelContainer("f1", "fz", 10, labels)
		start := time.Now()
		d := build(testInput(c, labelContainer("f2", "other", 11, map[string]string{"v6reg.ingress": "tcp/80 from @traefik"})))
		if el := time.Since(start); el > 2*time.Second {
			t.Fatalf("build took %v for labels %q", el, labels)
		}
		if err := d.Firewall.Validate(); err != nil {
			t.Fatalf("labels %q gave a state the firewall refuses: %v", labels, err)
		}
		w := workloadOf(t, d, c.ID)
		if w.Closed {
			if fc, ok := fwOf(d, c.ID); ok && len(fc.Ingress)+len(fc.Egress) > 0 {
				t.Fatalf("closed container has rules: %+v", fc)
			}
			for _, r := range regsOf(d, c.ID) {
				if r.Check.Kind != "critical" {
					t.Fatalf("closed container registered healthy: %+v", r)
				}
			}
		}
		if o := workloadOf(t, d, cid("f2")); o.Closed {
			t.Fatalf("a neighbour's labels closed another container: %+v", o)
		}
	})
}
