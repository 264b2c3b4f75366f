// Package testlog gives tests a logger: one that writes to the test's
// log (a failure shows what the code said), or one that writes nothing.
package testlog

import (
	"io"
	"log/slog"
	"strings"
	"testing"
)

// New logs at debug level to t's log.
func New(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(writer{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// Quiet logs nothing.
func Quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

type writer struct{ t testing.TB }

func (w writer) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
