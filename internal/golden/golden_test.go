package golden

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLineDiff(t *testing.T) {
	for _, tt := range []struct{ name, want, got, diff string }{
		{
			name: "changed line keeps three lines of context",
			want: "1\n2\n3\n4\n5\n6\n7\n8\n",
			got:  "1\n2\n3\n4\nfive\n6\n7\n8\n",
			diff: "@@ file line 2, output line 2 @@\n  2\n  3\n  4\n- 5\n+ five\n  6\n  7\n  8\n",
		},
		{
			name: "two changes far apart are two groups",
			want: "a\n1\n2\n3\n4\n5\n6\n7\n8\nb\n",
			got:  "A\n1\n2\n3\n4\n5\n6\n7\n8\nB\n",
			diff: "@@ file line 1, output line 1 @@\n- a\n+ A\n  1\n  2\n  3\n" +
				"@@ file line 7, output line 7 @@\n  6\n  7\n  8\n- b\n+ B\n",
		},
		{
			name: "inserted and removed lines",
			want: "x\ny\nz\n",
			got:  "x\nnew\nz\nend\n",
			diff: "@@ file line 1, output line 1 @@\n  x\n- y\n+ new\n  z\n+ end\n",
		},
		{
			name: "missing trailing newline",
			want: "x\ny\n",
			got:  "x\ny",
			diff: "@@ file line 1, output line 1 @@\n  x\n- y\n+ y  [no newline at end]\n",
		},
		{
			name: "empty file",
			want: "",
			got:  "x\n",
			diff: "@@ file line 1, output line 1 @@\n+ x\n",
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if d := lineDiff(tt.want, tt.got); d != tt.diff {
				t.Errorf("lineDiff:\n%s\nwant:\n%s", d, tt.diff)
			}
		})
	}
}

// TestLineDiffLarge: past maxCells the middle is printed whole, not
// compared line by line.
func TestLineDiffLarge(t *testing.T) {
	var a, b strings.Builder
	for i := range 3000 {
		fmt.Fprintf(&a, "a%d\n", i)
		fmt.Fprintf(&b, "b%d\n", i)
	}
	d := lineDiff(a.String(), b.String())
	if n := strings.Count(d, "\n- "); n != 3000 {
		t.Errorf("%d removed lines, want 3000", n)
	}
	if n := strings.Count(d, "\n+ "); n != 3000 {
		t.Errorf("%d added lines, want 3000", n)
	}
}

// recorder is a T that keeps what Check reported.
type recorder struct {
	errors, logs []string
	fatal        bool
}

func (r *recorder) Helper()      {}
func (r *recorder) Name() string { return "TestX/sub_case" }
func (r *recorder) Errorf(format string, args ...any) {
	r.errors = append(r.errors, fmt.Sprintf(format, args...))
}
func (r *recorder) Fatalf(format string, args ...any) {
	r.errors = append(r.errors, fmt.Sprintf(format, args...))
	r.fatal = true
}
func (r *recorder) Logf(format string, args ...any) {
	r.logs = append(r.logs, fmt.Sprintf(format, args...))
}

func TestCheck(t *testing.T) {
	t.Setenv(EnvUpdate, "")
	if *update {
		t.Skip("-update given: this test checks the comparison")
	}
	path := filepath.Join(t.TempDir(), "out.golden")

	var r recorder
	Check(&r, path, "x\n")
	if !r.fatal || !strings.Contains(r.errors[0], "to create it: go test ./internal/golden/ -run '^TestX$/^sub_case$' -update") {
		t.Errorf("missing file: %q, want a fatal error that says how to create it", r.errors)
	}

	if err := os.WriteFile(path, []byte("x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r = recorder{}
	Check(&r, path, "x\n")
	if len(r.errors) != 0 {
		t.Errorf("same content: %q, want no error", r.errors)
	}

	r = recorder{}
	Check(&r, path, "y\n")
	want := "output differs from the golden file " + path + " (- file, + output):\n" +
		"@@ file line 1, output line 1 @@\n- x\n+ y\n\n" +
		"if the change is intended, rewrite the file: go test ./internal/golden/ -run '^TestX$/^sub_case$' -update (or V6REG_UPDATE_GOLDEN=1 go test ...)"
	if r.fatal || len(r.errors) != 1 || r.errors[0] != want {
		t.Errorf("different content: fatal %v, errors %q\nwant one error:\n%s", r.fatal, r.errors, want)
	}
}

func TestCheckUpdate(t *testing.T) {
	t.Setenv(EnvUpdate, "1")
	path := filepath.Join(t.TempDir(), "new", "out.golden")
	var r recorder
	Check(&r, path, "y\n")
	if len(r.errors) != 0 {
		t.Fatalf("update: %q, want no error", r.errors)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "y\n" {
		t.Errorf("after update the file holds %q (%v), want %q", b, err, "y\n")
	}
}
