package agent

import "github.com/v6reg/v6reg/firewall"

// The real firewall has every optional capability the agent asks for: a
// renamed or changed method would otherwise drop a metric or a status
// field without an error.
var (
	_ Firewall          = (*firewall.Firewall)(nil)
	_ RestoreCounter    = (*firewall.Firewall)(nil)
	_ SpoofCounter      = (*firewall.Firewall)(nil)
	_ RepairingFirewall = (*firewall.Firewall)(nil)
)
