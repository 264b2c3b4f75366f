// Package dockerd starts a private Docker daemon for integration tests and
// the demo: its own data root, exec root and socket, no default bridge, so
// it never touches the host's Docker and several can run side by side.
package dockerd

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
	"github.com/vishvananda/netlink"
)

// BusyboxRef is the locally built test image.
const BusyboxRef = "v6reg-busybox:test"

// BusyboxCmd is the image's default command: sleep, but exit at once on
// SIGTERM (PID 1 has no default signal handlers, so a bare `sleep` would
// make every docker stop and daemon shutdown wait for the kill timeout).
var BusyboxCmd = []string{"/bin/sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"}

// Options tune the daemon.
type Options struct {
	// Binary is the dockerd to run; empty: Binary().
	Binary string
	// Iptables lets dockerd program iptables (and, on 27+, ip6tables).
	// Off by default: parallel test daemons in the host's namespace would
	// fight over its DOCKER chains. The end-to-end topology turns it on
	// for engines other than 20.10, in the node namespace, as operators
	// run them.
	Iptables bool
	// ExtraArgs are appended to the dockerd command line.
	ExtraArgs []string
	// Logf receives progress lines; nil discards.
	Logf func(format string, args ...any)
	// Start starts the dockerd process; nil starts it in the current
	// network namespace. The end-to-end topology passes a netns' Start so
	// dockerd, its bridge and its containers live in the node namespace.
	Start func(*exec.Cmd) error
}

// Daemon is a running private dockerd.
type Daemon struct {
	Dir    string // everything lives below it
	Socket string // unix socket path
	Client *client.Client

	opts    Options
	cmd     *exec.Cmd
	exited  chan struct{}
	logFile *os.File
}

// DefaultBinary is Debian's dockerd (docker.io, Engine 20.10).
const DefaultBinary = "/usr/sbin/dockerd"

// EnvBinary names the environment variable that selects another dockerd
// for the whole suite, e.g. the Engine 28 that
// integration/scripts/build-docker.sh builds (`make test` runs the
// integration suite once more with it). Its docker-proxy must sit next
// to it.
const EnvBinary = "V6REG_DOCKERD"

// Binary is the dockerd the harness runs: $V6REG_DOCKERD, else Debian's.
func Binary() string {
	if b := os.Getenv(EnvBinary); b != "" {
		return b
	}
	return DefaultBinary
}

// Custom says the suite runs an engine other than Debian's (V6REG_DOCKERD).
func Custom() bool { return Binary() != DefaultBinary }

// ErrNoDockerd says the selected dockerd is not there.
func ErrNoDockerd() error {
	if Custom() {
		return fmt.Errorf("dockerd not found at %s ($%s): build it with integration/scripts/build-docker.sh", Binary(), EnvBinary)
	}
	return errors.New("dockerd not found at " + DefaultBinary + ": install it with `apt-get install docker.io` (CI installs it)")
}

// StartDaemon starts dockerd with all its state under dir and waits until it
// answers. Call Cleanup when done, also on error (it is safe on a partial
// start).
func StartDaemon(ctx context.Context, dir string, o Options) (*Daemon, error) {
	if o.Binary == "" {
		o.Binary = Binary()
	}
	if _, err := os.Stat(o.Binary); err != nil {
		return nil, ErrNoDockerd()
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	d := &Daemon{Dir: dir, Socket: filepath.Join(dir, "docker.sock"), opts: o}
	if err := d.start(ctx); err != nil {
		return d, err
	}
	return d, nil
}

func (d *Daemon) args() []string {
	a := []string{
		"--data-root", filepath.Join(d.Dir, "data"),
		"--exec-root", filepath.Join(d.Dir, "exec"),
		"--pidfile", filepath.Join(d.Dir, "docker.pid"),
		"-H", "unix://" + d.Socket,
		"--bridge=none",
		"--userland-proxy=false",
	}
	if !d.opts.Iptables {
		a = append(a, "--iptables=false")
		if d.opts.Binary != DefaultBinary {
			// 27+ has ip6tables on by default, independent of
			// iptables: off too, so a daemon in the host's namespace
			// leaves the host's ip6tables alone.
			a = append(a, "--ip6tables=false")
		}
	}
	if d.opts.Binary != DefaultBinary {
		// The docker-proxy built with it (ports published to the
		// host loopback still need it, even with --userland-proxy=false).
		a = append(a, "--userland-proxy-path", filepath.Join(filepath.Dir(d.opts.Binary), "docker-proxy"))
	}
	a = append(a, d.opts.ExtraArgs...)
	// e.g. "--firewall-backend=nftables --bridge-accept-fwmark=0x10000000/0x10000000"
	// to run the suite on Docker 29's nftables backend.
	return append(a, strings.Fields(os.Getenv(EnvArgs))...)
}

// EnvArgs names the environment variable whose words are appended to
// every test dockerd's command line.
const EnvArgs = "V6REG_DOCKERD_ARGS"

func (d *Daemon) start(ctx context.Context) error {
	if err := os.MkdirAll(d.Dir, 0o700); err != nil {
		return fmt.Errorf("dockerd dir: %w", err)
	}
	lf, err := os.OpenFile(filepath.Join(d.Dir, "dockerd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("dockerd log: %w", err)
	}
	d.logFile = lf
	cmd := exec.Command(d.opts.Binary, d.args()...) //nolint:gosec // G204: the dockerd the test setup selected
	cmd.Stdout, cmd.Stderr = lf, lf
	if dir := filepath.Dir(d.opts.Binary); d.opts.Binary != DefaultBinary {
		if _, err := os.Stat(filepath.Join(dir, "runc")); err == nil {
			// Docker 29 needs a newer runc than Debian's; build-docker.sh
			// puts it next to dockerd. First in PATH, containerd and its
			// shims (dockerd's children) run it.
			cmd.Env = append(os.Environ(), "PATH="+dir+string(os.PathListSeparator)+os.Getenv("PATH"))
		}
	}
	// Its own process group, so a test's ctrl-C does not kill it before
	// cleanup, and so cleanup can signal what it spawned.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	startFn := d.opts.Start
	if startFn == nil {
		startFn = (*exec.Cmd).Start
	}
	if err := startFn(cmd); err != nil {
		return fmt.Errorf("dockerd start: %w", err)
	}
	d.cmd = cmd
	d.exited = make(chan struct{})
	go func() { _ = cmd.Wait(); close(d.exited) }()
	start := time.Now()
	if d.Client == nil {
		cli, err := client.NewClientWithOpts(client.WithHost("unix://"+d.Socket), client.WithAPIVersionNegotiation())
		if err != nil {
			return fmt.Errorf("docker client: %w", err)
		}
		d.Client = cli
	}
	for {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := d.Client.Ping(pctx)
		cancel()
		if err == nil {
			break
		}
		select {
		case <-d.exited:
			return fmt.Errorf("dockerd exited during start: %v\n%s", cmd.ProcessState, d.LogTail(30))
		case <-ctx.Done():
			return fmt.Errorf("dockerd did not answer on %s: %w (last error %v)\n%s", d.Socket, ctx.Err(), err, d.LogTail(30))
		case <-time.After(100 * time.Millisecond):
		}
	}
	// Negotiate now, so callers see the daemon's API version.
	d.Client.NegotiateAPIVersion(ctx)
	d.opts.Logf("dockerd pid %d answering on %s after %s (API %s)", cmd.Process.Pid, d.Socket, time.Since(start).Round(time.Millisecond), d.Client.ClientVersion())
	return nil
}

// LogTail returns the last n lines of the daemon log.
func (d *Daemon) LogTail(n int) string {
	b, _ := os.ReadFile(filepath.Join(d.Dir, "dockerd.log"))
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Stop shuts dockerd down (SIGTERM, as systemd would: containers are
// stopped, restart policies apply on the next start), killing it if it
// does not exit before ctx ends.
func (d *Daemon) Stop(ctx context.Context) error {
	if d.cmd == nil || d.exited == nil {
		return nil
	}
	select {
	case <-d.exited:
	default:
		_ = d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.exited:
		case <-ctx.Done():
			_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
			d.killContainerd()
			<-d.exited
		}
	}
	d.cmd = nil
	if d.logFile != nil {
		_ = d.logFile.Close()
		d.logFile = nil
	}
	return nil
}

// killContainerd ends the containerd that dockerd manages; it lives in its
// own process group and would outlive a killed dockerd.
func (d *Daemon) killContainerd() {
	b, err := os.ReadFile(filepath.Join(d.Dir, "exec", "containerd", "containerd.pid"))
	if err != nil {
		return
	}
	if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// Restart stops and starts dockerd with the same state.
func (d *Daemon) Restart(ctx context.Context) error {
	if err := d.Stop(ctx); err != nil {
		return err
	}
	return d.start(ctx)
}

// RemoveAll force-removes every container and every non-default network.
// Tests that run a network plugin call it (via t.Cleanup registered after
// the plugin starts, so it runs before the plugin stops): without the
// plugin, dockerd retries the plugin on every removal.
func (d *Daemon) RemoveAll(ctx context.Context) error {
	if d.cmd == nil || d.Client == nil {
		return nil
	}
	var errs []error
	cs, err := d.Client.ContainerList(ctx, container.ListOptions{All: true})
	if err != nil {
		return fmt.Errorf("list containers: %w", err)
	}
	for _, c := range cs {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		if err := d.Client.ContainerRemove(rctx, c.ID, container.RemoveOptions{Force: true}); err != nil {
			errs = append(errs, fmt.Errorf("remove container %.12s: %w", c.ID, err))
		}
		cancel()
		if ctx.Err() != nil {
			break
		}
	}
	ns, err := d.Client.NetworkList(ctx, network.ListOptions{})
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("list networks: %w", err))...)
	}
	for _, n := range ns {
		if n.Name == "none" || n.Name == "host" || n.Name == "bridge" {
			continue
		}
		if err := d.Client.NetworkRemove(ctx, n.ID); err != nil {
			errs = append(errs, fmt.Errorf("remove network %s: %w", n.Name, err))
		}
	}
	return errors.Join(errs...)
}

// Cleanup removes every container and network, stops the daemon, kills
// whatever it left running (containerd, shims and their containers),
// unmounts what is left below Dir and removes Dir. It is safe on a partly
// started or already stopped daemon and returns every failure.
func (d *Daemon) Cleanup(ctx context.Context) error {
	var errs []error
	// Bridges of networks that fail to go away would outlive the daemon.
	var bridges []string
	if d.cmd != nil && d.Client != nil {
		lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		ns, _ := d.Client.NetworkList(lctx, network.ListOptions{})
		cancel()
		for _, n := range ns {
			if n.Driver != "bridge" {
				continue
			}
			if b := n.Options["com.docker.network.bridge.name"]; b != "" {
				bridges = append(bridges, b)
			} else if len(n.ID) >= 12 {
				bridges = append(bridges, "br-"+n.ID[:12])
			}
		}
	}
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	if err := d.RemoveAll(rctx); err != nil {
		errs = append(errs, err)
	}
	cancel()
	sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	if err := d.Stop(sctx); err != nil {
		errs = append(errs, err)
	}
	cancel()
	if n := killBelow(d.Dir); n > 0 {
		d.opts.Logf("dockerd cleanup: killed %d leftover processes (containerd, shims, container processes)", n)
	}
	for _, b := range bridges {
		if l, err := netlink.LinkByName(b); err == nil {
			if err := netlink.LinkDel(l); err != nil {
				errs = append(errs, fmt.Errorf("delete leftover bridge %s: %w", b, err))
			}
		}
	}
	if d.Client != nil {
		_ = d.Client.Close()
	}
	if err := unmountBelow(d.Dir); err != nil {
		errs = append(errs, err)
	}
	if err := os.RemoveAll(d.Dir); err != nil {
		errs = append(errs, fmt.Errorf("remove %s: %w", d.Dir, err))
	}
	return errors.Join(errs...)
}

// killBelow SIGKILLs every process whose command line names dir (the
// containerd and shims of this daemon) and all their descendants.
func killBelow(dir string) int {
	entries, _ := os.ReadDir("/proc")
	parent := map[int]int{}
	victims := map[int]bool{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if cmd, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline")); err == nil && bytes.Contains(cmd, []byte(dir)) {
			victims[pid] = true
		}
		if stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat")); err == nil {
			// The comm field may hold spaces; ppid follows the last ')'.
			if i := bytes.LastIndexByte(stat, ')'); i > 0 {
				if f := strings.Fields(string(stat[i+1:])); len(f) > 1 {
					ppid, _ := strconv.Atoi(f[1])
					parent[pid] = ppid
				}
			}
		}
	}
	for changed := true; changed; {
		changed = false
		for pid, ppid := range parent {
			if victims[ppid] && !victims[pid] {
				victims[pid], changed = true, true
			}
		}
	}
	for pid := range victims {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	return len(victims)
}

// unmountBelow detaches every mount under dir, deepest first.
func unmountBelow(dir string) error {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return fmt.Errorf("mountinfo: %w", err)
	}
	defer func() { _ = f.Close() }() // read-only
	var mounts []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			mounts = append(mounts, mp)
		}
	}
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i]) > len(mounts[j]) })
	var errs []error
	for _, m := range mounts {
		if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", m, err))
		}
	}
	return errors.Join(errs...)
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Start is the test wrapper: a private dockerd under a fresh directory,
// removed with all its containers in t.Cleanup even when the test fails.
// Without dockerd the test fails, naming the package to install.
func Start(t testing.TB) *Daemon {
	t.Helper()
	return StartWith(t, Options{})
}

// StartWith is Start with options (Logf defaults to t.Logf).
func StartWith(t testing.TB, o Options) *Daemon {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("dockerd tests need root; CI runs as root")
		}
		t.Skip("needs root to run dockerd")
	}
	if _, err := os.Stat(Binary()); err != nil && o.Binary == "" {
		t.Fatal(ErrNoDockerd())
	}
	// A short path: the docker and containerd sockets must fit in 108 bytes.
	dir, err := os.MkdirTemp("", "v6d-")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if o.Logf == nil {
		o.Logf = t.Logf
	}
	d, err := StartDaemon(ctx, dir, o)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if err := d.Cleanup(ctx); err != nil {
			t.Errorf("dockerd cleanup: %v", err)
		}
	})
	if err != nil {
		t.Fatalf("dockerd: %v", err)
	}
	return d
}

// BusyboxImage builds BusyboxRef from the host's static busybox (Debian
// busybox-static): a rootfs tar imported with ImageImport, since nothing
// can be pulled. Its Cmd is BusyboxCmd.
func BusyboxImage(ctx context.Context, cli *client.Client) (string, error) {
	rootfs, err := busyboxRootfs("/bin/busybox")
	if err != nil {
		return "", err
	}
	cmdJSON, _ := json.Marshal(BusyboxCmd)
	rc, err := cli.ImageImport(ctx, image.ImportSource{Source: bytes.NewReader(rootfs), SourceName: "-"}, BusyboxRef,
		image.ImportOptions{Changes: []string{"CMD " + string(cmdJSON)}})
	if err != nil {
		return "", fmt.Errorf("busybox image import: %w", err)
	}
	defer func() { _ = rc.Close() }() // the reply is read to EOF or its error returned
	// The reply is a JSON message stream; errors come inside it.
	dec := json.NewDecoder(rc)
	for {
		var m struct {
			Error       string
			ErrorDetail struct{ Message string }
		}
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return "", fmt.Errorf("busybox image import reply: %w", err)
		}
		if m.Error != "" {
			return "", fmt.Errorf("busybox image import: %s", m.Error)
		}
	}
	return BusyboxRef, nil
}

func busyboxRootfs(busybox string) ([]byte, error) {
	bin, err := os.ReadFile(busybox) //nolint:gosec // G304: the busybox binary the test environment names
	if err != nil {
		return nil, fmt.Errorf("busybox binary (apt-get install busybox-static): %w", err)
	}
	out, err := exec.Command(busybox, "--list-full").Output()
	if err != nil {
		return nil, fmt.Errorf("busybox applet list: %w", err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	now := time.Now()
	dirs := []string{"bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "root", "var", "run"}
	for _, dname := range dirs {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dname + "/", Mode: 0o755, ModTime: now}); err != nil {
			return nil, err
		}
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "tmp/", Mode: 0o1777, ModTime: now}); err != nil {
		return nil, err
	}
	// Account files every container expects, not credentials: no passwords.
	files := map[string]string{ //nolint:gosec // G101: see above
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
		"etc/group":  "root:x:0:\nnogroup:x:65534:\n",
	}
	for name, body := range files {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(body)), ModTime: now}); err != nil {
			return nil, err
		}
		if _, err := io.WriteString(tw, body); err != nil {
			return nil, err
		}
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755, Size: int64(len(bin)), ModTime: now}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(bin); err != nil {
		return nil, err
	}
	for _, applet := range strings.Fields(string(out)) {
		applet = strings.TrimPrefix(applet, "/")
		if applet == "bin/busybox" || !strings.Contains(applet, "/") {
			continue
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: applet, Linkname: "/bin/busybox", ModTime: now}); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
