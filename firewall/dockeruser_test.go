package firewall

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/v6reg/v6reg/internal/netns"
)

// TestDockerUserAccept checks the rule in a fresh namespace where
// ip6tables-nft made Docker's chain, as dockerd 28 does: ip6tables reads
// it back as the command it stands for, a second call changes nothing,
// a changed prefix replaces it, and Docker's own rules stay.
func TestDockerUserAccept(t *testing.T) {
	netns.RequireRoot(t)
	ns := netns.New(t, "dkuser")
	ipt := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("ip", append([]string{"netns", "exec", ns.Name, "ip6tables-nft"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("ip6tables %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	conn, err := nftables.New(nftables.WithNetNSFd(ns.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	if res, err := EnsureDockerUserAccept(conn, testPrefix, "v6reg0"); err != nil || res != DockerUserAbsent {
		t.Fatalf("without the chain: %v, %v; want absent", res, err)
	}
	if _, err := exec.LookPath("ip6tables-nft"); err != nil {
		t.Skip("ip6tables-nft not installed (apt-get install iptables)")
	}
	ipt("-N", "DOCKER-USER")
	ipt("-A", "DOCKER-USER", "-s", "2001:db8:99::/48", "-j", "DROP") // the operator's own
	res, err := EnsureDockerUserAccept(conn, testPrefix, "v6reg0")
	if err != nil || res != DockerUserAdded {
		t.Fatalf("first: %v, %v; want added", res, err)
	}
	got := ipt("-S", "DOCKER-USER")
	want := `-A DOCKER-USER -d 2001:db8:1:2:3::/80 -o v6reg0 -m comment --comment "` + dockerUserTag + `" -j ACCEPT`
	lines := strings.Split(strings.TrimSpace(got), "\n")
	if len(lines) != 3 || lines[1] != want || !strings.Contains(lines[2], "-s 2001:db8:99::/48 -j DROP") {
		t.Fatalf("ip6tables -S DOCKER-USER:\n%s\nwant first:\n%s", got, want)
	}
	if res, err := EnsureDockerUserAccept(conn, testPrefix, "v6reg0"); err != nil || res != DockerUserPresent {
		t.Fatalf("second: %v, %v; want present", res, err)
	}
	other := pfx("2001:db8:1:2:4::/80")
	if res, err := EnsureDockerUserAccept(conn, other, "v6reg0"); err != nil || res != DockerUserAdded {
		t.Fatalf("new prefix: %v, %v; want added", res, err)
	}
	got = ipt("-S", "DOCKER-USER")
	if strings.Count(got, dockerUserTag) != 1 || !strings.Contains(got, "-d 2001:db8:1:2:4::/80") {
		t.Fatalf("after a prefix change:\n%s", got)
	}
}

// TestDockerMark reads the mark from a rule as Docker 29's nftables
// backend writes it (bridge-accept-fwmark 0x10000000/0x10000000) and sets
// it on packets to the prefix in table ip6 v6reg-docker, once.
func TestDockerMark(t *testing.T) {
	netns.RequireRoot(t)
	ns := netns.New(t, "dkmark")
	conn, err := nftables.New(nftables.WithNetNSFd(ns.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, backend, _, err := DockerAcceptMark(conn, "v6reg0"); err != nil || backend {
		t.Fatalf("without Docker's table: backend %v, %v", backend, err)
	}
	nftList(t, ns, "add", "table", "ip6", "docker-bridges")
	nftList(t, ns, "add", "chain", "ip6", "docker-bridges", "filter-forward-in__v6reg0")
	if _, _, backend, found, err := DockerAcceptMark(conn, "v6reg0"); err != nil || !backend || found {
		t.Fatalf("without bridge-accept-fwmark: backend %v found %v, %v", backend, found, err)
	}
	nftList(t, ns, "add", "rule", "ip6", "docker-bridges", "filter-forward-in__v6reg0", "meta", "mark", "and", "268435456", "==", "268435456", "counter", "accept", "comment", `"ALLOW FW MARK"`)
	mark, mask, backend, found, err := DockerAcceptMark(conn, "v6reg0")
	if err != nil || !backend || !found || mark != 0x10000000 || mask != 0x10000000 {
		t.Fatalf("mark %#x/%#x backend %v found %v, %v", mark, mask, backend, found, err)
	}
	if changed, err := EnsureDockerMark(conn, testPrefix, "v6reg0", mark, mask); err != nil || !changed {
		t.Fatalf("first: %v %v", changed, err)
	}
	got := nftList(t, ns, "list", "table", "ip6", "v6reg-docker")
	for _, want := range []string{"hook forward priority filter - 1; policy accept;", `oifname "v6reg0" ip6 daddr 2001:db8:1:2:3::/80 meta mark set meta mark | 0x10000000`} {
		if !strings.Contains(got, want) {
			t.Fatalf("table ip6 v6reg-docker:\n%s\nwant %q", got, want)
		}
	}
	if changed, err := EnsureDockerMark(conn, testPrefix, "v6reg0", mark, mask); err != nil || changed {
		t.Fatalf("second: %v %v, want unchanged", changed, err)
	}
}
