package agent

import (
	"testing"

	"github.com/v6reg/v6reg/firewall"
	"github.com/v6reg/v6reg/policies"
)

// The policy language refuses what the firewall cannot program: both must
// agree on how many ports one rule may name.
func TestPortLimitsAgree(t *testing.T) {
	if policies.MaxRulePorts != firewall.MaxRulePorts {
		t.Fatalf("policies.MaxRulePorts = %d, firewall.MaxRulePorts = %d", policies.MaxRulePorts, firewall.MaxRulePorts)
	}
}
