package ipam

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"hash/fnv"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// State is everything the store holds.
type State struct {
	Leases []Lease
	Holds  []Hold
}

// Change is one durable mutation: all of it or nothing.
type Change struct {
	PutLeases    []Lease
	DeleteLeases []netip.Addr
	PutHolds     []Hold
	DeleteHolds  []netip.Addr
}

func (c Change) empty() bool {
	return len(c.PutLeases)+len(c.DeleteLeases)+len(c.PutHolds)+len(c.DeleteHolds) == 0
}

// Store persists leases and hold-downs. Commit returns only once the change
// is durable, so an answer given to Docker survives a crash.
type Store interface {
	Load() (State, error)
	Commit(Change) error
	Close() error
}

// storeFormat is the on-disk format version kept in the meta bucket.
const storeFormat = 1

var (
	bucketMeta   = []byte("meta")
	bucketLeases = []byte("leases")
	bucketHolds  = []byte("holds")
	keyFormat    = []byte("format")
)

// CorruptStoreError says the lease store cannot be trusted. The agent must
// not start on an empty store instead: that would forget leases and hand out
// duplicates.
type CorruptStoreError struct {
	Path string
	Err  error
}

func (e *CorruptStoreError) Error() string {
	return fmt.Sprintf("ipam lease store %s is corrupt or truncated (%v); refusing to start with it. "+
		"Recover with `v6reg ipam rebuild`: it moves the file aside to %s.corrupt-<time> and rebuilds the leases from the addresses Docker has in use. "+
		"Recovery loses the hold-down list (addresses released within the hold-down period may be handed out again) and grant times and owner hints",
		e.Path, e.Err, e.Path)
}

func (e *CorruptStoreError) Unwrap() error { return e.Err }

// BoltStore is the Store on a bbolt file.
type BoltStore struct {
	path string
	mu   sync.Mutex
	db   *bolt.DB
}

// OpenBoltStore opens (or creates) the lease store at path and checks it
// completely: bbolt's page consistency check, the format version, and a
// CRC of every record. A damaged file yields *CorruptStoreError.
func OpenBoltStore(path string) (*BoltStore, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("ipam state directory: %w", err)
	}
	fi, statErr := os.Stat(path)
	existed := statErr == nil
	// bbolt would initialise an empty file as a new store; an existing but
	// empty file means it was truncated, and treating it as new would
	// forget every lease.
	if existed && fi.Size() == 0 {
		return nil, &CorruptStoreError{Path: path, Err: errors.New("file is empty")}
	}
	db, err := openBolt(path)
	if err != nil {
		switch {
		case errors.Is(err, bolterrors.ErrTimeout):
			return nil, fmt.Errorf("ipam lease store %s is locked by another process (is another v6reg agent running?): %w", path, err)
		case errors.Is(err, fs.ErrPermission), errors.Is(err, fs.ErrNotExist):
			return nil, fmt.Errorf("ipam lease store %s: %w", path, err)
		case existed:
			return nil, &CorruptStoreError{Path: path, Err: err}
		}
		return nil, fmt.Errorf("ipam lease store %s: %w", path, err)
	}
	s := &BoltStore{path: path, db: db}
	// Verify an existing file read-only before writing anything to it: a
	// damaged file is left exactly as found for the recovery.
	if existed {
		_, err = s.Load()
	} else {
		err = s.init()
	}
	if err != nil {
		_ = db.Close()
		return nil, err
	}
	return s, nil
}

// guard runs fn, turning bbolt panics and memory faults on a damaged file
// into a CorruptStoreError. bbolt trusts its pages; a corrupt one can
// fault (SIGSEGV, or SIGBUS past the end of a truncated file) or trip an
// assertion. (bbolt's own tx.Check walks the pages in a goroutine of its
// own, where such a fault kills the process, so it is not used.)
func guard(path string, fn func() error) (err error) {
	old := debug.SetPanicOnFault(true)
	defer debug.SetPanicOnFault(old)
	defer func() {
		if r := recover(); r != nil {
			err = &CorruptStoreError{Path: path, Err: fmt.Errorf("reading pages: %v", r)}
		}
	}()
	return fn()
}

func openBolt(path string) (db *bolt.DB, err error) {
	err = guard(path, func() error {
		var oerr error
		db, oerr = bolt.Open(path, 0o600, &bolt.Options{Timeout: 3 * time.Second})
		return oerr
	})
	return db, err
}

// init lays out a new store.
func (s *BoltStore) init() error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketMeta, bucketLeases, bucketHolds} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		m := tx.Bucket(bucketMeta)
		if err := m.Put(keyFormat, []byte(fmt.Sprint(storeFormat))); err != nil {
			return err
		}
		return m.Put(keyDigest, digest{}.encode())
	})
	if err != nil {
		return fmt.Errorf("ipam lease store %s init: %w", s.path, err)
	}
	return nil
}

// FormatError says the store was written by a v6reg with another format.
type FormatError struct {
	Path string
	Have string
}

func (e *FormatError) Error() string {
	return fmt.Sprintf("ipam lease store %s has format %q, this v6reg reads format %d: run the v6reg version that wrote it", e.Path, e.Have, storeFormat)
}

// Load reads and verifies every record.
func (s *BoltStore) Load() (st State, err error) {
	st = State{}
	s.mu.Lock()
	defer s.mu.Unlock()
	err = guard(s.path, func() error {
		return s.db.View(func(tx *bolt.Tx) error {
			// bbolt maps a short file without complaint; every page up
			// to the high-water mark must be there.
			if fi, err := os.Stat(s.path); err == nil && fi.Size() < tx.Size() {
				return &CorruptStoreError{Path: s.path, Err: fmt.Errorf("file is %d bytes but its pages need %d: truncated", fi.Size(), tx.Size())}
			}
			lb, hb, mb := tx.Bucket(bucketLeases), tx.Bucket(bucketHolds), tx.Bucket(bucketMeta)
			if lb == nil || hb == nil || mb == nil {
				return &CorruptStoreError{Path: s.path, Err: errors.New("lease, hold or meta bucket missing")}
			}
			if v := mb.Get(keyFormat); string(v) != fmt.Sprint(storeFormat) {
				if v == nil {
					return &CorruptStoreError{Path: s.path, Err: errors.New("format version missing")}
				}
				return &FormatError{Path: s.path, Have: string(v)}
			}
			var d digest
			if err := lb.ForEach(func(k, v []byte) error {
				var l Lease
				if err := decodeRecord(k, v, &l, func() netip.Addr { return l.Addr }); err != nil {
					return &CorruptStoreError{Path: s.path, Err: fmt.Errorf("lease %q: %w", k, err)}
				}
				d.add(0, k, v)
				st.Leases = append(st.Leases, l)
				return nil
			}); err != nil {
				return err
			}
			if err := hb.ForEach(func(k, v []byte) error {
				var h Hold
				if err := decodeRecord(k, v, &h, func() netip.Addr { return h.Addr }); err != nil {
					return &CorruptStoreError{Path: s.path, Err: fmt.Errorf("hold %q: %w", k, err)}
				}
				d.add(1, k, v)
				st.Holds = append(st.Holds, h)
				return nil
			}); err != nil {
				return err
			}
			if stored := decodeDigest(mb.Get(keyDigest)); stored != d {
				return &CorruptStoreError{Path: s.path, Err: fmt.Errorf("records do not match the store digest (have %d leases, %d holds; digest says %d, %d): records were lost or altered", d.n[0], d.n[1], stored.n[0], stored.n[1])}
			}
			return nil
		})
	})
	return st, err
}

// Records are a CRC32C of the JSON followed by the JSON, keyed by the
// address text: bbolt checksums only its meta pages, so without this a
// flipped bit in a record would be read as a different lease.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func encodeRecord(v any) ([]byte, error) {
	js, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 4, 4+len(js))
	binary.BigEndian.PutUint32(out, crc32.Checksum(js, castagnoli))
	return append(out, js...), nil
}

func decodeRecord(k, v []byte, into any, addr func() netip.Addr) error {
	if len(v) < 4 {
		return errors.New("record too short")
	}
	if crc32.Checksum(v[4:], castagnoli) != binary.BigEndian.Uint32(v[:4]) {
		return errors.New("record checksum mismatch")
	}
	if err := json.Unmarshal(v[4:], into); err != nil {
		return fmt.Errorf("record: %w", err)
	}
	if a := addr(); !a.IsValid() || a.String() != string(k) {
		return fmt.Errorf("record address %s does not match its key", a)
	}
	return nil
}

// digest summarises all records: count per bucket and the XOR of a hash of
// every key and value. It is kept in the meta bucket and updated by each
// commit, so a page that loses or alters records (which bbolt itself would
// read without complaint) is caught at open.
type digest struct {
	n [2]uint64
	x [2]uint64
}

var keyDigest = []byte("digest")

func recordHash(k, v []byte) uint64 {
	h := fnv.New64a()
	// hash.Hash writes never return an error.
	_, _ = h.Write(k)
	_, _ = h.Write([]byte{0})
	_, _ = h.Write(v)
	return h.Sum64()
}

func (d *digest) add(bucket int, k, v []byte) {
	d.n[bucket]++
	d.x[bucket] ^= recordHash(k, v)
}

func (d *digest) remove(bucket int, k, v []byte) {
	d.n[bucket]--
	d.x[bucket] ^= recordHash(k, v)
}

func (d digest) encode() []byte {
	b := make([]byte, 32)
	binary.BigEndian.PutUint64(b[0:], d.n[0])
	binary.BigEndian.PutUint64(b[8:], d.n[1])
	binary.BigEndian.PutUint64(b[16:], d.x[0])
	binary.BigEndian.PutUint64(b[24:], d.x[1])
	return b
}

// decodeDigest returns the zero digest for a missing value, which matches
// only an empty store.
func decodeDigest(b []byte) digest {
	var d digest
	if len(b) != 32 {
		if b != nil {
			d.n[0] = ^uint64(0) // never matches
		}
		return d
	}
	d.n[0] = binary.BigEndian.Uint64(b[0:])
	d.n[1] = binary.BigEndian.Uint64(b[8:])
	d.x[0] = binary.BigEndian.Uint64(b[16:])
	d.x[1] = binary.BigEndian.Uint64(b[24:])
	return d
}

// Commit writes c in one bbolt transaction; bbolt fsyncs before returning.
func (s *BoltStore) Commit(c Change) error {
	if c.empty() {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	err := s.db.Update(func(tx *bolt.Tx) error {
		buckets := [2]*bolt.Bucket{tx.Bucket(bucketLeases), tx.Bucket(bucketHolds)}
		mb := tx.Bucket(bucketMeta)
		d := decodeDigest(mb.Get(keyDigest))
		del := func(i int, a netip.Addr) error {
			k := []byte(a.String())
			if old := buckets[i].Get(k); old != nil {
				d.remove(i, k, old)
			}
			return buckets[i].Delete(k)
		}
		put := func(i int, a netip.Addr, rec any) error {
			v, err := encodeRecord(rec)
			if err != nil {
				return err
			}
			if err := del(i, a); err != nil {
				return err
			}
			k := []byte(a.String())
			d.add(i, k, v)
			return buckets[i].Put(k, v)
		}
		for _, a := range c.DeleteLeases {
			if err := del(0, a); err != nil {
				return err
			}
		}
		for _, a := range c.DeleteHolds {
			if err := del(1, a); err != nil {
				return err
			}
		}
		for _, l := range c.PutLeases {
			if err := put(0, l.Addr, l); err != nil {
				return err
			}
		}
		for _, h := range c.PutHolds {
			if err := put(1, h.Addr, h); err != nil {
				return err
			}
		}
		return mb.Put(keyDigest, d.encode())
	})
	if err != nil {
		return fmt.Errorf("ipam lease store %s commit: %w", s.path, err)
	}
	return nil
}

// Close closes the file; safe to call twice.
func (s *BoltStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.db == nil {
		return nil
	}
	err := s.db.Close()
	s.db = nil
	if err != nil {
		return fmt.Errorf("ipam lease store %s close: %w", s.path, err)
	}
	return nil
}

// Path is the store file.
func (s *BoltStore) Path() string { return s.path }

// MoveAside renames a damaged store out of the way (path.corrupt-<time>)
// and returns the new name, for the rebuild recovery.
func MoveAside(path string, now time.Time) (string, error) {
	dst := fmt.Sprintf("%s.corrupt-%s", path, now.UTC().Format("20060102T150405Z"))
	if err := os.Rename(path, dst); err != nil {
		return "", fmt.Errorf("ipam lease store move aside: %w", err)
	}
	return dst, nil
}

// MemStore is an in-memory Store for tests and for dry runs.
type MemStore struct {
	mu     sync.Mutex
	leases map[netip.Addr]Lease
	holds  map[netip.Addr]Hold
	// FailNext makes the next Commit fail, to test that nothing is
	// handed out that was not persisted.
	FailNext error
}

// NewMemStore returns an empty MemStore.
func NewMemStore() *MemStore {
	return &MemStore{leases: map[netip.Addr]Lease{}, holds: map[netip.Addr]Hold{}}
}

// Load implements Store.
func (m *MemStore) Load() (State, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var st State
	for _, l := range m.leases {
		st.Leases = append(st.Leases, l)
	}
	for _, h := range m.holds {
		st.Holds = append(st.Holds, h)
	}
	return st, nil
}

// Commit implements Store.
func (m *MemStore) Commit(c Change) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.FailNext; err != nil {
		m.FailNext = nil
		return err
	}
	for _, a := range c.DeleteLeases {
		delete(m.leases, a)
	}
	for _, a := range c.DeleteHolds {
		delete(m.holds, a)
	}
	for _, l := range c.PutLeases {
		m.leases[l.Addr] = l
	}
	for _, h := range c.PutHolds {
		m.holds[h.Addr] = h
	}
	return nil
}

// Close implements Store.
func (m *MemStore) Close() error { return nil }
