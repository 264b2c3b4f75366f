# /etc/v6reg/v6reg.hcl: the v6reg agent's configuration.
# Every field is optional except node_prefix. Environment variables override
# the file (CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, CONSUL_CACERT,
# CONSUL_CLIENT_CERT, CONSUL_CLIENT_KEY, NOMAD_ADDR, NOMAD_TOKEN, NOMAD_CACERT,
# NOMAD_CLIENT_CERT, NOMAD_CLIENT_KEY, DOCKER_HOST, V6REG_NODE_PREFIX), and
# `v6reg agent` flags override both. An invalid field stops the agent at start
# with "file:line: field: what is wrong: what to do".
# SIGHUP (systemctl reload v6reg) applies peer, internal_prefixes, namespace,
# services and docker.labels_* changes live; everything else needs a restart
# (the agent logs which).

# The IPv6 prefix routed to this node (/64 to /112; /80 is the convention).
# node_prefix = "2001:db8:1:2:3::/80"

# The bridge's address in node_prefix; never leased. Default: prefix::1.
# gateway = "2001:db8:1:2:3::1"

# Private IPv4 subnet for containers' IPv4 egress through the node's NAT.
# ipv4_egress_subnet = "172.30.0.0/16"

# Addresses never handed out (besides prefix::0 and the gateway).
# reserved = []

# How long a released address stays unused (stale DNS, Traefik and peer
# caches still point at the old container).
# hold_down = "1h"

# state_dir       = "/var/lib/v6reg"          # lease store (ipam.db)
# api_socket      = "/run/v6reg/v6reg.sock"   # root-only; v6reg status/explain
# metrics_address = "127.0.0.1:9466"          # Prometheus /metrics, /healthz; "" disables
# resync_interval = "60s"                     # full reconcile period
# log_level       = "info"                    # debug, info, warn, error
# log_format      = "text"                    # text or json
# node_name       = ""                        # default: hostname

docker {
  # host           = "unix:///var/run/docker.sock"
  # network        = "v6reg"        # jobs use network_mode = "v6reg"
  # create_network = true           # create it at start, or check it matches
  # bridge_name    = "v6reg0"
  # plugin_name    = "v6reg"        # IPAM driver: /run/docker/plugins/v6reg.sock
  # Containers started without Nomad (policy from v6reg.* labels) belong
  # to this namespace; their v6reg.namespace label may only repeat it,
  # unless labels_choose_namespace lets whoever runs a container pick any.
  # A namespace of their own (with its own namespace block) keeps them
  # from registering names and job: peers that Nomad jobs of "default" use.
  # labels_namespace        = "default"
  # labels_choose_namespace = false
}

consul {
  # enabled           = true
  # address           = "127.0.0.1:8500"
  # token             = ""
  # ca_file           = ""
  # cert_file         = ""
  # key_file          = ""
  # service_id_prefix = "v6reg"     # marks the registrations v6reg owns
}

nomad {
  # Read this node's allocations (policy from job meta). Containers started
  # by Nomad stay closed while this is off.
  enabled = true
  # address = "http://127.0.0.1:4646"
  # token   = ""
  # node_id = ""                     # default: ask the local Nomad agent
}

# firewall {
#   enabled    = true                 # false leaves the whole prefix open
#   # The node's own services containers may reach (on the gateway or any
#   # node address); nothing else on the node answers them, not even ping.
#   # E.g. a resolver and the Consul agent: ["udp/53", "tcp/53", "tcp/8500", "icmp"]
#   node_ports = []
# }

# Your own prefixes, IPv6 and IPv4 (your datacenter's public IPv4 ranges):
# excluded from @internet, which is 2000::/3 and the public IPv4 space.
# internal_prefixes = ["2001:db8::/32", "198.51.100.0/24"]

# Named peer sets; jobs write them as @name.
peer "traefik" {
  prefixes = []
}
peer "monitoring" {
  prefixes = []
}
peer "ops" {
  prefixes = []
}
peer "dns" {
  prefixes = []
}

# What the jobs of each Nomad namespace may ask for; "*" covers the others.
# A namespace with no bounds may declare no rules (its containers stay closed).
namespace "*" {
  peers          = ["traefik", "monitoring", "ops", "dns"]
  allow_internet = true
  allow_any      = false
  # prefixes     = ["2001:db8::/32"]   # where literal prefixes may point
  # ingress_ports = ["80", "443", "8000-9999"]
  # egress_ports  = []
  # Other namespaces whose services jobs here may name as service:NS/NAME
  # ("*": all). service:NAME is always this namespace's own NAME.
  # service_namespaces = []
  # Service names jobs here may register in v6reg_services (patterns with
  # '*', '?', [a-z]); empty: any name. v6reg-* names are always refused.
  # Consul's service names are global: with jobs in more than one namespace,
  # bound services or tiers per namespace, or a job in one can join
  # another's service and take its Traefik host (the agent warns at start).
  # services = ["shop-*"]
  # Tiers services here may be registered with (v6reg_tier, else the job
  # name before its first '-'); the tier names Traefik routers and hosts
  # (TIER-SERVICE). Empty: any tier.
  # tiers = ["d", "t"]
}

# Size limits: no job can blow up the node's table, its reconcile or its
# Consul connections for the other tenants (see policies/README.md, "Size
# limits"). A container over a per-container limit is refused like a bad
# policy (closed, the error in `v6reg status` and its Consul check); over a
# node limit, the containers already running keep their place and the new
# one waits, closed, naming the limit. The policy limits apply on SIGHUP;
# consul_watch_connections needs a restart.
# limits {
#   container_elements       = 4096    # firewall elements of one container (a tcp/udp port = 1 per direction)
#   container_peers          = 32      # distinct service:/job: peers one container names
#   container_services       = 32      # services one container declares (each a Consul registration and check)
#   node_elements            = 100000  # firewall elements of the whole node
#   node_peer_sets           = 512     # distinct service:/job: peers of the whole node
#   peer_set_addresses       = 2048    # addresses taken from one service:/job: set (the oldest registrations)
#   consul_watch_connections = 32      # connections the peer watches hold to Consul (3..150; Consul allows 200)
# }

services {
  domain = "cloud.example"
  # Tags for every v6reg_services entry: Go templates over .Job .Group .Task
  # .Namespace .Service .Port .Check .Tier .Domain .Name .AllocID .ShortAllocID
  # tags = [
  #   "{{if ne .Check \"tcp\"}}traefik.enable=true{{end}}",
  #   "{{if ne .Check \"tcp\"}}traefik.http.routers.{{.Name}}.rule=Host(`{{.Name}}.{{.Domain}}`){{end}}",
  # ]
}
