// Command v6reg is the host agent for IPv6 Nomad/Docker nodes: it gives
// every container an address from the node's prefix, programs its firewall
// from the job's policy, and registers its services in Consul.
package main

import (
	"fmt"
	"io"
	"os"
	"runtime"
)

// Set by the Makefile with -ldflags "-X main.version=... -X main.commit=...".
var (
	version = "dev"
	commit  = "unknown"
)

const usage = `v6reg: IPv6 addresses, firewall and Consul registration for Nomad containers

Usage:
  v6reg <command> [flags] [arguments]

Commands:
  agent          run the node agent (Docker IPAM driver, firewall, Consul registration)
  policy check   check the v6reg_* policies of a Nomad job before it is deployed
  status         show every container the agent manages, from the agent's socket
  explain        say which rule allows or denies a flow to or from a container
  ipam rebuild   recover a corrupt lease store by rebuilding leases from Docker
  version        print the version and commit

Run "v6reg <command> -help" for a command's flags.
Configuration: /etc/v6reg/v6reg.hcl (see packaging/v6reg.hcl for every field).
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "agent":
		return runAgent(args[1:], stdout, stderr)
	case "policy":
		return runPolicy(args[1:], stdin, stdout, stderr)
	case "status":
		return runStatus(args[1:], stdout, stderr)
	case "explain":
		return runExplain(args[1:], stdout, stderr)
	case "ipam":
		return runIPAM(args[1:], stdout, stderr)
	case "version", "-version", "--version":
		fmt.Fprintf(stdout, "v6reg %s (commit %s, %s)\n", version, commit, runtime.Version())
		return 0
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "v6reg: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
}
