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
