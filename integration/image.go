package integration

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"

	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"
)

// ProbeImageRef is the test image: busybox-static (servers: httpd, sleep)
// and v6probe (the HTTP client), imported from a local tar, since nothing
// can be pulled.
const ProbeImageRef = "v6reg-probe:test"

// applets are the busybox commands the image links.
var applets = []string{"sh", "sleep", "httpd", "mkdir", "echo", "cat", "ip", "ping", "nc", "ls"}

// BuildProbe compiles v6probe statically into dir and returns its path.
func BuildProbe(dir string) (string, error) {
	_, self, _, _ := runtime.Caller(0)
	out := filepath.Join(dir, "v6probe")
	cmd := exec.Command("go", "build", "-o", out, "./cmd/v6probe")
	cmd.Dir = filepath.Dir(self)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building v6probe: %w\n%s", err, b)
	}
	return out, nil
}

// ProbeImage imports the test image into the daemon behind cli.
func ProbeImage(ctx context.Context, cli *client.Client, probe string) (string, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(name, src string) error {
		b, err := os.ReadFile(src) //nolint:gosec // G304: the test's own probe and busybox binaries
		if err != nil {
			return fmt.Errorf("image file %s: %w (apt-get install busybox-static)", src, err)
		}
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o755, Size: int64(len(b))}); err != nil {
			return err
		}
		_, err = tw.Write(b)
		return err
	}
	for _, d := range []string{"bin/", "tmp/", "www/"} {
		if err := tw.WriteHeader(&tar.Header{Name: d, Mode: 0o755, Typeflag: tar.TypeDir}); err != nil {
			return "", err
		}
	}
	if err := add("bin/busybox", "/bin/busybox"); err != nil {
		return "", err
	}
	if err := add("bin/v6probe", probe); err != nil {
		return "", err
	}
	for _, a := range applets {
		if err := tw.WriteHeader(&tar.Header{Name: "bin/" + a, Typeflag: tar.TypeSymlink, Linkname: "busybox"}); err != nil {
			return "", err
		}
	}
	if err := tw.Close(); err != nil {
		return "", err
	}
	rc, err := cli.ImageImport(ctx, image.ImportSource{Source: &buf, SourceName: "-"}, ProbeImageRef, image.ImportOptions{})
	if err != nil {
		return "", fmt.Errorf("importing %s: %w", ProbeImageRef, err)
	}
	defer func() { _ = rc.Close() }() // read to EOF below, or its error returned
	if _, err := io.Copy(io.Discard, rc); err != nil {
		return "", fmt.Errorf("importing %s: %w", ProbeImageRef, err)
	}
	return ProbeImageRef, nil
}
