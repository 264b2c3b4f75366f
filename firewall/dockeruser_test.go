package firewall

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/v6reg/v6reg/integration/netns"
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
