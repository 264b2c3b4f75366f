package integration

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// The RPM's payload: exactly these paths, nothing else.
var rpmFiles = []string{
	"/etc/v6reg",
	"/etc/v6reg/v6reg.hcl",
	"/usr/bin/v6reg",
	"/usr/lib/modules-load.d/v6reg.conf",
	"/usr/lib/systemd/system/v6reg.service",
	"/usr/lib/tmpfiles.d/v6reg.conf",
	"/usr/share/doc/v6reg/README.md",
	"/var/lib/v6reg",
}

// TestRPM builds the package with `make rpm`, inspects it with rpm, and
// installs, upgrades and erases it in a chroot, where the scriptlets run
// for real: once without systemd (they must succeed and do nothing), once
// with a recording systemctl (they must make the right calls for $1).
func TestRPM(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: installs the RPM into a chroot (rpm --root runs the scriptlets chrooted)")
	}
	if _, err := exec.LookPath("rpm"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("rpm is missing under CI: apt-get install rpm (make deps does): %v", err)
		}
		t.Skip("rpm is missing: apt-get install rpm (or make deps) to inspect the package")
	}
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	gitVersion := strings.TrimSpace(rpmRun(t, repo, filepath.Join(repo, "packaging/rpm-version.sh")))
	commit := strings.TrimSpace(rpmRun(t, repo, "git", "rev-parse", "--short", "HEAD"))

	out := t.TempDir()
	pkg := makeRPM(t, repo, out, "")
	if fi, err := os.Stat(pkg); err != nil {
		t.Fatalf("make rpm left no package at %s: %v", pkg, err)
	} else {
		t.Logf("package %s: %d bytes", pkg, fi.Size())
	}

	t.Run("header", func(t *testing.T) {
		got := rpmRun(t, "", "rpm", "-qp", "--qf", "%{NAME} %{VERSION} %{RELEASE} %{ARCH}", pkg)
		want := "v6reg " + gitVersion + " 1 "
		if !strings.HasPrefix(got, want) {
			t.Errorf("name version release arch = %q, want prefix %q (version from packaging/rpm-version.sh)", got, want)
		}
		if strings.Contains(gitVersion, "-") {
			t.Errorf("version %q contains '-', which RPM forbids", gitVersion)
		}
	})

	t.Run("files", func(t *testing.T) {
		got := rpmLines(rpmRun(t, "", "rpm", "-qpl", pkg))
		if !slices.Equal(got, rpmFiles) {
			t.Errorf("rpm -qpl:\n got %q\nwant %q", got, rpmFiles)
		}
		// c: config, n: noreplace (an upgrade keeps the operator's edits),
		// d: doc.
		flags := map[string]string{}
		for _, l := range rpmLines(rpmRun(t, "", "rpm", "-qp", "--qf", "[%{FILENAMES} %{FILEFLAGS:fflags}\n]", pkg)) {
			name, f, _ := strings.Cut(l, " ")
			flags[name] = f
		}
		for path, want := range map[string]string{
			"/etc/v6reg/v6reg.hcl":                  "cn",
			"/usr/bin/v6reg":                        "",
			"/usr/lib/systemd/system/v6reg.service": "",
			"/usr/share/doc/v6reg/README.md":        "d",
		} {
			if flags[path] != want {
				t.Errorf("%s: file flags %q, want %q", path, flags[path], want)
			}
		}
	})

	t.Run("config", func(t *testing.T) {
		got := rpmLines(rpmRun(t, "", "rpm", "-qpc", pkg))
		if !slices.Equal(got, []string{"/etc/v6reg/v6reg.hcl"}) {
			t.Errorf("rpm -qpc = %q, want only /etc/v6reg/v6reg.hcl", got)
		}
	})

	t.Run("scripts", func(t *testing.T) {
		got := rpmRun(t, "", "rpm", "-qp", "--scripts", pkg)
		for _, want := range []string{
			"postinstall scriptlet (using /bin/sh)",
			"preuninstall scriptlet (using /bin/sh)",
			"postuninstall scriptlet (using /bin/sh)",
			"systemctl daemon-reload",
			"systemctl --no-reload enable v6reg.service",
			"systemctl try-restart v6reg.service",
			"systemctl --no-reload disable --now v6reg.service",
			"[ -d /run/systemd/system ]",
		} {
			if !strings.Contains(got, want) {
				t.Errorf("rpm -qp --scripts lacks %q:\n%s", want, got)
			}
		}
	})

	t.Run("install without systemd", func(t *testing.T) {
		root := newChroot(t, false)
		rpmIn(t, root, "-i", "--nodeps", pkg)
		for path, want := range map[string]fs.FileMode{
			"/usr/bin/v6reg":                        0o755,
			"/usr/lib/systemd/system/v6reg.service": 0o644,
			"/usr/lib/tmpfiles.d/v6reg.conf":        0o644,
			"/usr/lib/modules-load.d/v6reg.conf":    0o644,
			"/etc/v6reg/v6reg.hcl":                  0o640,
			"/etc/v6reg":                            fs.ModeDir | 0o755,
			"/var/lib/v6reg":                        fs.ModeDir | 0o700,
			"/usr/share/doc/v6reg/README.md":        0o644,
		} {
			fi, err := os.Stat(filepath.Join(root, path))
			if err != nil {
				t.Errorf("installed %s: %v", path, err)
				continue
			}
			if fi.Mode() != want {
				t.Errorf("installed %s: mode %v, want %v", path, fi.Mode(), want)
			}
		}
		if b, err := os.ReadFile(filepath.Join(repo, "packaging/v6reg.hcl")); err != nil {
			t.Error(err)
		} else if got, _ := os.ReadFile(filepath.Join(root, "etc/v6reg/v6reg.hcl")); string(got) != string(b) {
			t.Error("installed /etc/v6reg/v6reg.hcl differs from packaging/v6reg.hcl")
		}

		v := rpmRun(t, "", filepath.Join(root, "usr/bin/v6reg"), "version")
		t.Logf("installed binary: %s", strings.TrimSpace(v))
		if !strings.HasPrefix(v, "v6reg ") || strings.HasPrefix(v, "v6reg dev") || !strings.Contains(v, "commit "+commit) {
			t.Errorf("v6reg version = %q, want the git version with commit %s", v, commit)
		}

		verifyUnit(t, root)

		rpmIn(t, root, "-e", "v6reg")
		for _, path := range []string{"/usr/bin/v6reg", "/usr/lib/systemd/system/v6reg.service", "/etc/v6reg/v6reg.hcl"} {
			if _, err := os.Lstat(filepath.Join(root, path)); err == nil {
				t.Errorf("%s is still there after rpm -e", path)
			}
		}
	})

	t.Run("scriptlets with systemd", func(t *testing.T) {
		root := newChroot(t, true)
		calls := func() []string {
			t.Helper()
			b, err := os.ReadFile(filepath.Join(root, "calls.log"))
			if err != nil && !os.IsNotExist(err) {
				t.Fatal(err)
			}
			_ = os.Remove(filepath.Join(root, "calls.log"))
			return rpmLines(string(b))
		}
		expect := func(step string, want []string) {
			t.Helper()
			if got := calls(); !slices.Equal(got, want) {
				t.Errorf("%s: scriptlet calls\n got %q\nwant %q", step, got, want)
			}
		}

		rpmIn(t, root, "-i", "--nodeps", pkg)
		expect("first install ($1=1)", []string{
			"systemctl daemon-reload",
			"systemd-tmpfiles --create /usr/lib/tmpfiles.d/v6reg.conf",
			"systemctl --no-reload enable v6reg.service",
		})

		// The operator's edits must survive an upgrade.
		hcl := filepath.Join(root, "etc/v6reg/v6reg.hcl")
		edited := []byte("node_prefix = \"2001:db8:1:2:3::/80\"\n")
		if err := os.WriteFile(hcl, edited, 0o640); err != nil {
			t.Fatal(err)
		}
		newer := makeRPM(t, repo, t.TempDir(), gitVersion+".1")
		rpmIn(t, root, "-U", "--nodeps", newer)
		// New %post with $1=2, then the old package's %preun ($1=1: nothing)
		// and %postun ($1=1).
		expect("upgrade ($1=2)", []string{
			"systemctl daemon-reload",
			"systemd-tmpfiles --create /usr/lib/tmpfiles.d/v6reg.conf",
			"systemctl try-restart v6reg.service",
			"systemctl daemon-reload",
		})
		if got, _ := os.ReadFile(hcl); string(got) != string(edited) {
			t.Errorf("upgrade replaced the edited /etc/v6reg/v6reg.hcl: now %q", got)
		}
		if got := strings.TrimSpace(rpmIn(t, root, "-q", "--qf", "%{VERSION}", "v6reg")); got != gitVersion+".1" {
			t.Errorf("installed version after upgrade = %q, want %q", got, gitVersion+".1")
		}

		rpmIn(t, root, "-e", "v6reg")
		expect("erase ($1=0)", []string{
			"systemctl --no-reload disable --now v6reg.service",
			"systemctl daemon-reload",
		})
		if got, err := os.ReadFile(hcl + ".rpmsave"); err != nil || string(got) != string(edited) {
			t.Errorf("erase did not keep the edited config as v6reg.hcl.rpmsave: %q, %v", got, err)
		}
	})
}

// makeRPM runs `make rpm` with its outputs in dir and returns the package.
func makeRPM(t *testing.T, repo, dir, version string) string {
	t.Helper()
	args := []string{"-C", repo, "--no-print-directory", "rpm", "BIN=" + filepath.Join(dir, "v6reg"), "RPM_DIR=" + dir}
	if version != "" {
		args = append(args, "RPM_VERSION="+version)
	}
	t.Logf("make %s", strings.Join(args, " "))
	rpmRun(t, "", "make", args...)
	return filepath.Join(dir, "v6reg.rpm")
}

// newChroot makes a minimal root for rpm --root: rpm chroots into it to
// run the scriptlets with /bin/sh (busybox). With systemd, it also has
// /run/systemd/system (what the scriptlets test for "systemd is running")
// and a systemctl and systemd-tmpfiles that record their arguments in
// /calls.log instead of acting.
func newChroot(t *testing.T, systemd bool) string {
	t.Helper()
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatalf("busybox (busybox-static) for the chroot's shell: %v", err)
	}
	root := t.TempDir()
	for _, d := range []string{"bin", "usr/bin", "dev", "tmp", "var/tmp"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(busybox)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "usr/bin/busybox"), b, 0o755); err != nil {
		t.Fatal(err)
	}
	// kill: the unit's ExecReload, which systemd-analyze verify checks.
	for _, l := range []string{"bin/sh", "bin/kill", "usr/bin/cat", "usr/bin/rm"} {
		if err := os.Symlink("/usr/bin/busybox", filepath.Join(root, l)); err != nil {
			t.Fatal(err)
		}
	}
	// The scriptlets redirect to /dev/null, as every shell script does.
	if err := unix.Mknod(filepath.Join(root, "dev/null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
		t.Fatalf("mknod /dev/null in the chroot: %v", err)
	}
	if systemd {
		if err := os.MkdirAll(filepath.Join(root, "run/systemd/system"), 0o755); err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"systemctl", "systemd-tmpfiles"} {
			fake := "#!/bin/sh\necho \"" + name + " $*\" >>/calls.log\n"
			if err := os.WriteFile(filepath.Join(root, "usr/bin", name), []byte(fake), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	rpmIn(t, root, "--initdb")
	return root
}

// rpmIn runs rpm on the database and files of root.
func rpmIn(t *testing.T, root string, args ...string) string {
	t.Helper()
	return rpmRun(t, "", "rpm", append([]string{"--root", root}, args...)...)
}

// verifyUnit runs systemd-analyze verify on the unit installed in root,
// when systemd-analyze is there. The host's targets are copied in: the
// unit names multi-user.target and network-online.target, and verify
// loads the default dependencies (sysinit.target...) from the root.
func verifyUnit(t *testing.T, root string) {
	t.Helper()
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Log("systemd-analyze is missing: not verifying the unit (apt-get install systemd to check it)")
		return
	}
	targets, err := filepath.Glob("/usr/lib/systemd/system/*.target")
	if err != nil || len(targets) == 0 {
		t.Logf("no systemd targets in /usr/lib/systemd/system: not verifying the unit (%v)", err)
		return
	}
	for _, src := range targets {
		b, err := os.ReadFile(src)
		if err != nil {
			continue // a dangling alias symlink
		}
		if err := os.WriteFile(filepath.Join(root, "usr/lib/systemd/system", filepath.Base(src)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("systemd-analyze", "verify", "--man=no", "--root="+root, "/usr/lib/systemd/system/v6reg.service")
	b, err := cmd.CombinedOutput()
	// verify exits 0 even for some warnings; a warning about our unit is
	// still a mistake in it.
	if err != nil || regexp.MustCompile(`(?m)^v6reg\.service:|/v6reg\.service:\d+:`).Match(b) {
		t.Errorf("systemd-analyze verify v6reg.service: %v\n%s", err, b)
	} else {
		t.Logf("systemd-analyze verify v6reg.service: ok%s", strings.TrimRight("\n"+string(b), "\n"))
	}
}

// rpmRun runs a command and returns its stdout, failing the test with its
// stderr if it fails.
func rpmRun(t *testing.T, dir, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out, stderr.String())
	}
	return string(out)
}

func rpmLines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}
