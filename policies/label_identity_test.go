package policies

import "testing"

func TestLabelIdentityKeys(t *testing.T) {
	m := FromLabels(map[string]string{"v6reg.job": "web", "v6reg.namespace": "shop", "v6reg.ingress": "tcp/80 from any"})
	if errs := m.Errors(); len(errs) != 0 {
		t.Fatalf("v6reg.job and v6reg.namespace are label identity keys, got errors %v", errs)
	}
	n := FromNomad(map[string]string{"v6reg_job": "web"}, nil, nil)
	if errs := n.Errors(); len(errs) != 1 || errs[0].Msg != "unknown v6reg key" {
		t.Fatalf("in Nomad meta v6reg_job is not a key (Nomad knows the job): errors %v", errs)
	}
}

func TestRulePortLimit(t *testing.T) {
	op := DefaultOperator()
	for _, tc := range []struct {
		ingress string
		errs    int
	}{
		{"tcp/8000-9023 from @ops", 0}, // exactly 1024
		{"tcp/8000-9024 from @ops", 1}, // 1025
		{"tcp/1-1000,2000-2100 from @ops", 1},
		{"tcp from @ops", 0},         // all ports: one element
		{"udp/1-65535 from @ops", 0}, // written out, still all ports
	} {
		_, errs := Evaluate(FromLabels(map[string]string{"v6reg.ingress": tc.ingress}), Context{}, op)
		if len(errs) != tc.errs {
			t.Errorf("%q: %d errors %v, want %d", tc.ingress, len(errs), errs, tc.errs)
		}
	}
}
