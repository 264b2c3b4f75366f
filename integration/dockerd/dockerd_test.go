package dockerd

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
)

// TestHarness proves the harness end to end: the daemon answers, the image
// builds without a pull, a container runs busybox, and Restart brings the
// same daemon state back.
func TestHarness(t *testing.T) {
	d := Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	ref, err := BusyboxImage(ctx, d.Client)
	if err != nil {
		t.Fatal(err)
	}
	c, err := d.Client.ContainerCreate(ctx, &container.Config{Image: ref, Cmd: []string{"sh", "-c", "echo hello-from-busybox"}}, &container.HostConfig{NetworkMode: "none"}, nil, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Client.ContainerStart(ctx, c.ID, container.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	waitC, errC := d.Client.ContainerWait(ctx, c.ID, container.WaitConditionNotRunning)
	select {
	case w := <-waitC:
		if w.StatusCode != 0 {
			t.Fatalf("busybox exit %d", w.StatusCode)
		}
	case err := <-errC:
		t.Fatal(err)
	}
	logs, err := d.Client.ContainerLogs(ctx, c.ID, container.LogsOptions{ShowStdout: true})
	if err != nil {
		t.Fatal(err)
	}
	b := new(strings.Builder)
	buf := make([]byte, 4096)
	for {
		n, err := logs.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	logs.Close()
	if !strings.Contains(b.String(), "hello-from-busybox") {
		t.Fatalf("container output %q lacks hello-from-busybox", b.String())
	}
	if err := d.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Client.ContainerInspect(ctx, c.ID); err != nil {
		t.Fatalf("container lost across daemon restart: %v", err)
	}
}

func TestUnescapeMount(t *testing.T) {
	for in, want := range map[string]string{`/a\040b`: "/a b", `/plain`: "/plain", `/x\134y`: `/x\y`, `\04`: `\04`} {
		if got := unescapeMount(in); got != want {
			t.Errorf("unescapeMount(%q) = %q, want %q", in, got, want)
		}
	}
}
