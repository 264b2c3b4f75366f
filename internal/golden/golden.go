// Package golden compares a test's output with a file kept in the
// repository (the `nft list` tables, the CLI's messages, the status and
// explain texts) and rewrites the file when the change is intended:
//
//	go test ./firewall/ -run '^TestGolden$' -update
//	V6REG_UPDATE_GOLDEN=1 go test ./...
//
// The flag exists only in test binaries that import this package, so
// `go test ./... -update` fails in the others; the environment variable
// works for any set of packages. A difference fails the test with a line
// diff and the command that rewrites the file.
package golden

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// EnvUpdate set to a non-empty value rewrites the golden files, as -update
// does.
const EnvUpdate = "V6REG_UPDATE_GOLDEN"

var update = flag.Bool("update", false, "rewrite the golden files from the current output (internal/golden)")

// Updating reports whether this run rewrites golden files instead of
// comparing with them.
func Updating() bool {
	return *update || os.Getenv(EnvUpdate) != ""
}

// T is what Check needs of its caller; *testing.T and *testing.B satisfy
// it.
type T interface {
	Helper()
	Name() string
	Errorf(format string, args ...any)
	Fatalf(format string, args ...any)
	Logf(format string, args ...any)
}

// Check compares got with the golden file at path (relative to the test's
// package directory, where go test runs it). When Updating, it writes got
// to path instead, creating the directory, and passes.
func Check(t T, path, got string) {
	t.Helper()
	if Updating() {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil { //nolint:gosec // G301: testdata is checked in, readable by all
			t.Fatalf("golden file: %v", err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatalf("golden file: %v", err)
		}
		t.Logf("golden file %s rewritten", path)
		return
	}
	want, err := os.ReadFile(path) //nolint:gosec // G304: the test names its own golden file
	if err != nil {
		t.Fatalf("golden file: %v\nto create it: %s", err, updateCommand(t.Name()))
		return
	}
	if got == string(want) {
		return
	}
	t.Errorf("output differs from the golden file %s (- file, + output):\n%s\nif the change is intended, rewrite the file: %s",
		path, lineDiff(string(want), got), updateCommand(t.Name()))
}

// updateCommand is the go test command that reruns only the test named
// test (a subtest included) and rewrites its golden files.
func updateCommand(test string) string {
	pkg := "."
	if wd, err := os.Getwd(); err == nil {
		if root := moduleRoot(wd); root != "" {
			if rel, err := filepath.Rel(root, wd); err == nil && rel != "." {
				pkg = "./" + filepath.ToSlash(rel) + "/"
			}
		}
	}
	parts := strings.Split(test, "/")
	for i, p := range parts {
		parts[i] = "^" + regexp.QuoteMeta(p) + "$"
	}
	return fmt.Sprintf("go test %s -run '%s' -update (or %s=1 go test ...)", pkg, strings.Join(parts, "/"), EnvUpdate)
}

// moduleRoot is the nearest directory at or above dir that holds go.mod,
// or "".
func moduleRoot(dir string) string {
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return ""
		}
		dir = parent
	}
}
