package agent

import (
	"os"
	"strings"
	"testing"
)

// restoringFirewall is a fake firewall that also counts restores, as the
// real one does, so that New registers v6reg_firewall_restores_total.
type restoringFirewall struct{ fakeFirewall }

func (*restoringFirewall) Restores() uint64 { return 0 }

// TestMetricsDocumented: every v6reg_ metric the agent registers is in
// the operator's table in packaging/README.md, and the table names none
// that is gone.
func TestMetricsDocumented(t *testing.T) {
	a := New(Options{Firewall: &restoringFirewall{}})
	m := a.o.Metrics
	// Vectors show up in Gather only with a child.
	m.Drops.WithLabelValues("c", "ingress")
	m.SpoofDrops.WithLabelValues("source")
	families, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile("../packaging/README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, table, ok := strings.Cut(string(doc), "### Metrics")
	if !ok {
		t.Fatal("packaging/README.md has no ### Metrics section")
	}
	registered := map[string]bool{}
	for _, f := range families {
		name := f.GetName()
		if !strings.HasPrefix(name, "v6reg_") {
			continue
		}
		registered[name] = true
		if !strings.Contains(table, "| `"+name+"`") && !strings.Contains(table, "| `"+name+"{") {
			t.Errorf("metric %s is not in the table of packaging/README.md (### Metrics)", name)
		}
	}
	if len(registered) < 10 {
		t.Fatalf("only %d v6reg_ metrics gathered: %v", len(registered), registered)
	}
	for _, line := range strings.Split(table, "\n") {
		name, ok := strings.CutPrefix(line, "| `v6reg_")
		if !ok {
			continue
		}
		name = "v6reg_" + name[:strings.IndexAny(name, "`{")]
		if !registered[name] {
			t.Errorf("packaging/README.md lists %s, which the agent does not register", name)
		}
	}
}
