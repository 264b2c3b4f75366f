package desired

import (
	"github.com/v6reg/v6reg/desired/desiredtest"
	"github.com/v6reg/v6reg/docker"
	"github.com/v6reg/v6reg/policies"
)

// The shared test values (desiredtest), under short names.
var (
	testPrefix  = desiredtest.Prefix
	testGateway = desiredtest.Gateway
	traefikV6   = desiredtest.TraefikV6
)

const (
	allocA = desiredtest.AllocA
	allocB = desiredtest.AllocB
)

func cid(tag string) string           { return desiredtest.CID(tag) }
func testOperator() policies.Operator { return desiredtest.Operator() }
func testInput(cs ...docker.Container) Input {
	return Input{
		Node: "n1", IDPrefix: "v6reg", Prefix: testPrefix, Gateway: testGateway,
		Operator: testOperator(), Containers: cs, Nomad: true,
		Lookup: desiredtest.NoAlloc, Peers: desiredtest.NoPeers,
	}
}
