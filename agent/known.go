package agent

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/v6reg/v6reg/nomad"
)

// KnownFile is the name of the file, in the state dir, that holds the
// last known policies across restarts.
const KnownFile = "last-known.json"

// knownFormat is the version of the file's layout; another one is refused
// as corrupt rather than misread.
const knownFormat = 1

// knownState is what the agent persists so that a restart while Nomad or
// Consul does not answer keeps what is in force: the allocations Nomad last
// listed for this node (their namespace, job, group and meta at each
// level, which is all that desired state needs of them) with Nomad's index,
// and the last answer for each Consul-backed peer set.
type knownState struct {
	// Nomad is set once Nomad has answered; before that Allocs means
	// nothing and is not used.
	Nomad      bool          `json:"nomad"`
	NomadIndex uint64        `json:"nomad_index"`
	NomadAt    time.Time     `json:"nomad_at"` // when Nomad gave that answer
	Allocs     []nomad.Alloc `json:"allocs"`
	// Peers are the last known addresses of each service:/job: peer set.
	// By the key's String form, so the file reads as the policies do.
	Peers   map[string][]netip.Prefix `json:"peers"`
	SavedAt time.Time                 `json:"saved_at"`
}

// knownEnvelope carries the state with a checksum of its exact bytes, so a
// torn or edited file is detected instead of read as a smaller truth.
type knownEnvelope struct {
	Format int             `json:"format"`
	SHA256 string          `json:"sha256"`
	State  json.RawMessage `json:"state"`
}

// CorruptKnownError says the persisted policies cannot be trusted. The
// agent reports it (log, status, v6reg_errors_total{kind="state"}), keeps
// the file aside as Kept and starts as if it had none: containers stay
// closed until Nomad answers.
type CorruptKnownError struct {
	Path    string
	Kept    string // where the corrupt file was moved; empty if it could not be
	Problem string
}

func (e *CorruptKnownError) Error() string {
	kept := "; it could not be moved aside"
	if e.Kept != "" {
		kept = "; kept as " + e.Kept
	}
	return fmt.Sprintf("persisted policies %s are corrupt (%s)%s: containers of allocations Nomad has not listed since this start stay closed until it answers", e.Path, e.Problem, kept)
}

// loadKnown reads the persisted state. A missing file is no state and no
// error (first start). A file that fails its checksum or does not parse is
// moved aside and reported as a *CorruptKnownError.
func loadKnown(path string) (*knownState, error) {
	b, err := os.ReadFile(path) //nolint:gosec // G304: the agent's own state file, from its config
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading persisted policies: %w", err)
	}
	k, problem := decodeKnown(b)
	if problem == "" {
		return k, nil
	}
	ce := &CorruptKnownError{Path: path, Problem: problem}
	kept := fmt.Sprintf("%s.corrupt-%s", path, time.Now().UTC().Format("20060102T150405Z"))
	if err := os.Rename(path, kept); err == nil {
		ce.Kept = kept
	}
	return nil, ce
}

func decodeKnown(b []byte) (*knownState, string) {
	var env knownEnvelope
	if err := json.Unmarshal(b, &env); err != nil {
		return nil, "not JSON: " + err.Error()
	}
	if env.Format != knownFormat {
		return nil, fmt.Sprintf("format %d, this agent reads %d", env.Format, knownFormat)
	}
	sum := sha256.Sum256(env.State)
	if hex.EncodeToString(sum[:]) != env.SHA256 {
		return nil, "checksum mismatch"
	}
	var k knownState
	if err := json.Unmarshal(env.State, &k); err != nil {
		return nil, "state does not parse: " + err.Error()
	}
	return &k, ""
}

// saveKnown writes k crash-safely: a temp file in the same directory,
// fsync'd, renamed over the old one, and the directory fsync'd, so after a
// crash the file is either the old state or the new one, never a mix.
func saveKnown(path string, k knownState) error {
	state, err := json.Marshal(k)
	if err != nil {
		return fmt.Errorf("encoding persisted policies: %w", err)
	}
	sum := sha256.Sum256(state)
	b, err := json.Marshal(knownEnvelope{Format: knownFormat, SHA256: hex.EncodeToString(sum[:]), State: state})
	if err != nil {
		return fmt.Errorf("encoding persisted policies: %w", err)
	}
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("persisting policies: %w", err)
	}
	defer func() { _ = os.Remove(tmp.Name()) }() // a no-op after the rename
	if _, err := tmp.Write(b); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("persisting policies to %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("persisting policies: fsync %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("persisting policies: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("persisting policies: %w", err)
	}
	d, err := os.Open(dir) //nolint:gosec // G304: the state dir, from the agent's config
	if err != nil {
		return fmt.Errorf("persisting policies: %w", err)
	}
	defer func() { _ = d.Close() }() // read-only: nothing to flush
	if err := d.Sync(); err != nil {
		return fmt.Errorf("persisting policies: fsync %s: %w", dir, err)
	}
	return nil
}
