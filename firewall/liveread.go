package firewall

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// elemReader compares a set's live elements with the wanted ones without
// copying them: a restart at 10,000 containers reads about 80,000
// elements, and all it needs to know is whether each set is exactly what
// the model wants. A set that differs is then read whole the ordinary way
// (GetSetElements) and diffed element by element, so a repair is computed
// exactly as before; only the equal case is cheap.
//
// It has a netlink socket of its own and receives with a large buffer.
// That matters to the kernel more than to Go: a set dump restarts its walk
// of the set from the first element for every message it fills, skipping
// what it already sent, so its cost is quadratic in the number of
// messages. The kernel sizes dump messages by the largest buffer the
// reader ever passed to recvmsg (up to 32 KiB); mdlayher/netlink (under
// google/nftables) passes a page, which made reading 10,000 elements walk
// the set about 400 times.
type elemReader struct {
	nsfd int
	c    *netlink.Conn
	buf  []byte
}

// dumpBuf is the receive buffer: more than the 32 KiB the kernel puts in
// one dump message.
const dumpBuf = 64 << 10

func (r *elemReader) conn() (*netlink.Conn, error) {
	if r.c == nil {
		c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: r.nsfd})
		if err != nil {
			return nil, fmt.Errorf("netlink dial for nftables set elements: %w", err)
		}
		r.c = c
		r.buf = make([]byte, dumpBuf)
	}
	return r.c, nil
}

func (r *elemReader) close() {
	if r.c != nil {
		_ = r.c.Close()
		r.c = nil
	}
}

// errUnexpected says the dump held something this reader does not
// compare; the caller reads the set the ordinary way.
var errUnexpected = errors.New("unexpected set element attribute")

// sameElems reports whether set s (of a table of ours) holds exactly the
// elements in want: the same ids, each elem.same as the wanted one. It is
// the condition under which diff finds nothing to do for the set. An
// error means the answer is unknown.
func (r *elemReader) sameElems(s *nftables.Set, want map[string]elem) (bool, error) {
	equal, matched := true, 0
	whole, err := r.dump(s, func(e *dumpElem) {
		if !equal {
			return
		}
		var w elem
		var ok bool
		if e.end {
			w, ok = want[string(e.key)+"\x01"]
		} else {
			w, ok = want[string(e.key)] // no string is built for the lookup
		}
		if !ok || !bytes.Equal(w.data, e.data) || !bytes.Equal(w.keyEnd, e.keyEnd) || w.comment != string(e.comment) {
			equal = false
			return
		}
		matched++
	})
	if err != nil {
		return false, err
	}
	// Live ids are unique (the kernel holds no duplicate key), so if every
	// live element matched and as many matched as want holds, the set is
	// exactly want.
	return whole && equal && matched == len(want), nil
}

// dumpElem is one element of a dump, its slices pointing into the
// receive buffer (valid during the callback only).
type dumpElem struct {
	key, keyEnd, data, comment []byte
	end                        bool
	counter                    *Counter // nil: the element has none
}

// dump calls fn with each element of set s. whole is false when some
// message was torn (the set changed during the dump) or held an element
// this reader does not parse: fn did not see every element as it is.
func (r *elemReader) dump(s *nftables.Set, fn func(*dumpElem)) (whole bool, err error) {
	c, err := r.conn()
	if err != nil {
		return false, err
	}
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: unix.NFTA_SET_TABLE, Data: []byte(s.Table.Name + "\x00")},
		{Type: unix.NFTA_SET_NAME, Data: []byte(s.Name + "\x00")},
	})
	if err != nil {
		return false, err
	}
	req, err := c.Send(netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETSETELEM),
			Flags: netlink.Request | netlink.Dump,
		},
		Data: append([]byte{byte(s.Table.Family), unix.NFNETLINK_V0, 0, 0}, attrs...),
	})
	if err != nil {
		r.close()
		return false, fmt.Errorf("nftables set elements of %s: %w", s.Name, err)
	}
	rc, err := c.SyscallConn()
	if err != nil {
		r.close()
		return false, err
	}
	d := elemDump{isMap: s.IsMap, whole: true, fn: fn}
	// Read the dump to its end even after a torn message, so the socket
	// holds nothing stale for the next request.
	for {
		var n int
		var rerr error
		if err := rc.Read(func(fd uintptr) bool {
			n, _, _, _, rerr = unix.Recvmsg(int(fd), r.buf, nil, unix.MSG_TRUNC)
			return rerr != unix.EAGAIN && rerr != unix.EWOULDBLOCK
		}); err != nil {
			rerr = err
		}
		if rerr != nil {
			r.close()
			return false, fmt.Errorf("nftables set elements of %s: %w", s.Name, rerr)
		}
		if n > len(r.buf) {
			r.close()
			return false, fmt.Errorf("nftables set elements of %s: a dump message of %d bytes, more than %d", s.Name, n, len(r.buf))
		}
		done, err := d.messages(r.buf[:n], req.Header.Sequence)
		if err != nil {
			r.close()
			return false, fmt.Errorf("nftables set elements of %s: %w", s.Name, err)
		}
		if done {
			return d.whole, nil
		}
	}
}

// elemDump parses a dump's messages and hands each element to fn.
type elemDump struct {
	isMap bool
	whole bool
	fn    func(*dumpElem)
	e     dumpElem
	ctr   Counter
}

var newElemType = uint16(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWSETELEM)

// messages walks the netlink messages in b; done is true at the dump's end.
func (m *elemDump) messages(b []byte, seq uint32) (done bool, err error) {
	for len(b) >= unix.NLMSG_HDRLEN {
		l := int(binary.NativeEndian.Uint32(b[0:4]))
		typ := binary.NativeEndian.Uint16(b[4:6])
		flags := binary.NativeEndian.Uint16(b[6:8])
		mseq := binary.NativeEndian.Uint32(b[8:12])
		if l < unix.NLMSG_HDRLEN || l > len(b) {
			return false, fmt.Errorf("netlink message of %d bytes in %d", l, len(b))
		}
		data := b[unix.NLMSG_HDRLEN:l]
		b = b[min(nlaAlign(l), len(b)):]
		if mseq != seq {
			continue // not ours (cannot happen on this private socket)
		}
		if flags&unix.NLM_F_DUMP_INTR != 0 {
			m.whole = false // the set changed during the dump: what was read may be torn
		}
		switch typ {
		case unix.NLMSG_DONE:
			if len(data) >= 4 {
				if e := int32(binary.NativeEndian.Uint32(data)); e != 0 { //nolint:gosec // G115: the dump's errno, negated
					return false, syscall.Errno(-e) //nolint:gosec // G115: -e is the positive errno
				}
			}
			return true, nil
		case unix.NLMSG_ERROR:
			if len(data) < 4 {
				return false, errors.New("short netlink error")
			}
			if e := int32(binary.NativeEndian.Uint32(data)); e != 0 { //nolint:gosec // G115: the kernel's errno, negated
				return false, syscall.Errno(-e) //nolint:gosec // G115: -e is the positive errno
			}
			return true, nil
		case newElemType:
			if m.whole && len(data) >= 4 {
				if err := m.list(data[4:]); err != nil {
					m.whole = false
				}
			}
		}
	}
	return false, nil
}

// list parses the elements of one NFT_MSG_NEWSETELEM message.
func (m *elemDump) list(b []byte) error {
	return eachAttr(b, func(typ uint16, v []byte) error {
		if typ != unix.NFTA_SET_ELEM_LIST_ELEMENTS {
			return nil
		}
		return eachAttr(v, func(typ uint16, v []byte) error {
			if typ != unix.NFTA_LIST_ELEM {
				return nil
			}
			return m.elem(v)
		})
	})
}

// Element attributes x/sys/unix lacks.
const (
	nftaSetElemKeyEnd      = 10 // NFTA_SET_ELEM_KEY_END
	nftaSetElemExpressions = 11 // NFTA_SET_ELEM_EXPRESSIONS
)

func (m *elemDump) elem(b []byte) error {
	m.e = dumpElem{}
	err := eachAttr(b, func(typ uint16, v []byte) error {
		var err error
		switch typ {
		case unix.NFTA_SET_ELEM_KEY:
			m.e.key, err = dataValue(v)
		case nftaSetElemKeyEnd:
			m.e.keyEnd, err = dataValue(v)
		case unix.NFTA_SET_ELEM_DATA:
			if m.isMap {
				m.e.data, err = dataValue(v)
			}
		case unix.NFTA_SET_ELEM_FLAGS:
			if len(v) != 4 {
				return errUnexpected
			}
			m.e.end = binary.BigEndian.Uint32(v)&unix.NFT_SET_ELEM_INTERVAL_END != 0
		case unix.NFTA_SET_ELEM_USERDATA:
			m.e.comment, err = udataComment(v)
		case unix.NFTA_SET_ELEM_EXPR:
			err = m.expr(v)
		case nftaSetElemExpressions:
			err = eachAttr(v, func(typ uint16, v []byte) error {
				if typ != unix.NFTA_LIST_ELEM {
					return nil
				}
				return m.expr(v)
			})
		}
		return err
	})
	if err != nil {
		return err
	}
	m.fn(&m.e)
	return nil
}

// expr notes the element's counter, if the expression is one.
func (m *elemDump) expr(b []byte) error {
	var name, data []byte
	if err := eachAttr(b, func(typ uint16, v []byte) error {
		switch typ {
		case unix.NFTA_EXPR_NAME:
			name = v
		case unix.NFTA_EXPR_DATA:
			data = v
		}
		return nil
	}); err != nil {
		return err
	}
	if string(bytes.TrimRight(name, "\x00")) != "counter" {
		return nil
	}
	m.ctr = Counter{}
	if err := eachAttr(data, func(typ uint16, v []byte) error {
		if (typ == unix.NFTA_COUNTER_BYTES || typ == unix.NFTA_COUNTER_PACKETS) && len(v) != 8 {
			return errUnexpected
		}
		switch typ {
		case unix.NFTA_COUNTER_BYTES:
			m.ctr.Bytes = binary.BigEndian.Uint64(v)
		case unix.NFTA_COUNTER_PACKETS:
			m.ctr.Packets = binary.BigEndian.Uint64(v)
		}
		return nil
	}); err != nil {
		return err
	}
	m.e.counter = &m.ctr
	return nil
}

// dataValue is the value in a NFTA_DATA_VALUE nest (a key or map data);
// a verdict or anything else is unexpected.
func dataValue(b []byte) ([]byte, error) {
	var out []byte
	err := eachAttr(b, func(typ uint16, v []byte) error {
		if typ != unix.NFTA_DATA_VALUE {
			return errUnexpected
		}
		out = v
		return nil
	})
	return out, err
}

// udataComment is the element comment in userdata, as
// userdata.GetString(NFTNL_UDATA_SET_ELEM_COMMENT) reads it: the first
// comment record, less one trailing NUL; none is empty.
func udataComment(u []byte) ([]byte, error) {
	for len(u) >= 2 {
		typ, l := u[0], int(u[1])
		if len(u) < 2+l {
			return nil, errUnexpected
		}
		if typ == 0 { // NFTNL_UDATA_SET_ELEM_COMMENT
			c, _ := bytes.CutSuffix(u[2:2+l], []byte{0})
			return c, nil
		}
		u = u[2+l:]
	}
	return nil, nil
}

func nlaAlign(n int) int { return (n + 3) &^ 3 }

// eachAttr calls fn with the type (flags masked) and value of each
// netlink attribute in b.
func eachAttr(b []byte, fn func(typ uint16, v []byte) error) error {
	for len(b) >= 4 {
		l := int(binary.NativeEndian.Uint16(b[0:2]))
		typ := binary.NativeEndian.Uint16(b[2:4]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
		if l < 4 || l > len(b) {
			return errUnexpected
		}
		if err := fn(typ, b[4:l]); err != nil {
			return err
		}
		b = b[min(nlaAlign(l), len(b)):]
	}
	return nil
}
