package agent

import (
	"context"

	consul "github.com/hashicorp/consul/api"

	"github.com/v6reg/v6reg/peers"
	"github.com/v6reg/v6reg/registrar"
)

// ConsulAPI is what the agent asks of the local Consul agent: the
// registrar's calls, the peer watches' query and, for the status API, the
// checks. *consulclient.Client satisfies it.
type ConsulAPI interface {
	registrar.API
	peers.API
	// Checks lists the checks of the local agent, with their live status
	// and output, for the status API.
	Checks(ctx context.Context) (map[string]*consul.AgentCheck, error)
}
