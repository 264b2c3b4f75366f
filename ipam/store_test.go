package ipam

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// fillStore writes a few leases and holds, one commit each, and returns the
// state expected on reopen and the state before the last commit.
func fillStore(t *testing.T, path string) (final, previous State) {
	t.Helper()
	s, err := OpenBoltStore(path)
	if err != nil {
		t.Fatal(err)
	}
	granted := time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC)
	for i := range 20 {
		l := Lease{Addr: offsetAddr(netip.MustParsePrefix("fd00:1::/80"), uint64(0x1000+i)), Pool: "fd00:1::/80", Granted: granted, Owner: fmt.Sprintf("02:42:ac:11:00:%02x", i)}
		if err := s.Commit(Change{PutLeases: []Lease{l}}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 5 {
		a := offsetAddr(netip.MustParsePrefix("fd00:1::/80"), uint64(0x1000+i))
		if i == 4 {
			previous, _ = s.Load()
		}
		if err := s.Commit(Change{DeleteLeases: []netip.Addr{a}, PutHolds: []Hold{{Addr: a, Pool: "fd00:1::/80", Released: granted.Add(time.Minute)}}}); err != nil {
			t.Fatal(err)
		}
	}
	final, err = s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	return final, previous
}

func TestStoreReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "ipam.db")
	want, _ := fillStore(t, path)
	if len(want.Leases) != 15 || len(want.Holds) != 5 {
		t.Fatalf("unexpected fill: %d leases %d holds", len(want.Leases), len(want.Holds))
	}
	s, err := OpenBoltStore(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("reopened state differs:\n got %+v\nwant %+v", got, want)
	}
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("store mode %v, want 0600", fi.Mode().Perm())
	}
}

func TestStoreCorruption(t *testing.T) {
	dir := t.TempDir()
	orig := filepath.Join(dir, "orig.db")
	fillStore(t, orig)
	data, err := os.ReadFile(orig)
	if err != nil {
		t.Fatal(err)
	}
	// bbolt allocates the file ahead; the pages in use end at the
	// high-water mark, and truncation matters below it.
	db, err := bolt.Open(orig, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	var hwm int
	_ = db.View(func(tx *bolt.Tx) error { hwm = int(tx.Size()); return nil })
	db.Close()
	t.Logf("file %d bytes, pages in use %d bytes", len(data), hwm)
	// A lease record as stored: its owner hint is unique in the file.
	rec := bytes.Index(data, []byte(`02:42:ac:11:00:0c`))
	if rec < 0 {
		t.Fatal("lease record not found in the file")
	}
	tests := []struct {
		name   string
		mutate func([]byte) []byte
	}{
		{"truncated to zero", func([]byte) []byte { return nil }},
		{"truncated to 100 bytes", func(b []byte) []byte { return b[:100] }},
		{"truncated to half of the pages in use", func(b []byte) []byte { return b[:hwm/2] }},
		{"truncated by one page in use", func(b []byte) []byte { return b[:hwm-4096] }},
		{"truncated by one byte in use", func(b []byte) []byte { return b[:hwm-1] }},
		{"flipped byte in a lease record", func(b []byte) []byte { b[rec] ^= 0x01; return b }},
		{"flipped byte in a record's JSON key", func(b []byte) []byte { b[rec-12] ^= 0x20; return b }},
		{"both meta pages zeroed", func(b []byte) []byte {
			clear(b[0:200])
			clear(b[4096 : 4096+200])
			return b
		}},
		{"garbage file", func([]byte) []byte { return bytes.Repeat([]byte("v6reg!"), 3000) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "-")+".db")
			if err := os.WriteFile(path, tt.mutate(bytes.Clone(data)), 0o600); err != nil {
				t.Fatal(err)
			}
			s, err := OpenBoltStore(path)
			if err == nil {
				s.Close()
				t.Fatal("corrupt store opened without error")
			}
			var ce *CorruptStoreError
			if !errors.As(err, &ce) || ce.Path != path {
				t.Fatalf("want *CorruptStoreError for %s, got %T: %v", path, err, err)
			}
			for _, want := range []string{path, "v6reg ipam rebuild", "hold-down"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error does not mention %q: %v", want, err)
				}
			}
			// Never silently reset: the damaged file is left as it was.
			if after, _ := os.ReadFile(path); !bytes.Equal(after, tt.mutate(bytes.Clone(data))) {
				t.Error("open modified the corrupt file")
			}
		})
	}
}

// TestStoreByteFlipSweep flips single bytes all over the file. Every
// outcome must be an error or exactly a state that was committed: the
// final one, or the one before the last commit when bbolt falls back to
// its older meta page (see the package report). Never a panic, never a
// state that was not written.
// TestStoreTruncatedTail: cutting the preallocated tail beyond the pages in
// use loses nothing, so the store opens with the same state.
func TestStoreTruncatedTail(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ipam.db")
	want, _ := fillStore(t, path)
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	var hwm int64
	_ = db.View(func(tx *bolt.Tx) error { hwm = tx.Size(); return nil })
	db.Close()
	if err := os.Truncate(path, hwm); err != nil {
		t.Fatal(err)
	}
	s, err := OpenBoltStore(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got, _ := s.Load(); !reflect.DeepEqual(got, want) {
		t.Fatal("state changed")
	}
}

func TestStoreByteFlipSweep(t *testing.T) {
	dir := t.TempDir()
	orig := filepath.Join(dir, "orig.db")
	final, previous := fillStore(t, orig)
	data, _ := os.ReadFile(orig)
	path := filepath.Join(dir, "flip.db")
	var detected, same, rolledBack int
	for pos := 0; pos < len(data); pos += 61 {
		b := bytes.Clone(data)
		b[pos] ^= 0x5a
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := OpenBoltStore(path)
		if err != nil {
			detected++
			continue
		}
		st, err := s.Load()
		s.Close()
		switch {
		case err != nil:
			detected++
		case reflect.DeepEqual(st, final):
			same++
		case reflect.DeepEqual(st, previous):
			rolledBack++
		default:
			t.Fatalf("flip at %d: store opened with a state never written: %d leases %d holds", pos, len(st.Leases), len(st.Holds))
		}
	}
	t.Logf("byte flips over %d bytes: %d detected, %d harmless (unused space), %d fell back to the previous commit", len(data), detected, same, rolledBack)
	if detected == 0 {
		t.Fatal("no flip detected")
	}
}

func TestStoreFormatVersion(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ipam.db")
	fillStore(t, path)
	s, err := OpenBoltStore(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(keyFormat, []byte("99")) }); err != nil {
		t.Fatal(err)
	}
	s.Close()
	_, err = OpenBoltStore(path)
	var fe *FormatError
	if !errors.As(err, &fe) || fe.Have != "99" {
		t.Fatalf("want FormatError, got %v", err)
	}
}

func TestMoveAside(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ipam.db")
	if err := os.WriteFile(path, []byte("junk"), 0o600); err != nil {
		t.Fatal(err)
	}
	dst, err := MoveAside(path, time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	if err != nil {
		t.Fatal(err)
	}
	if dst != path+".corrupt-20260102T030405Z" {
		t.Fatalf("moved to %s", dst)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatal("original still there")
	}
}
