// Package policytest makes hostile policy texts: the seeds and the mutator
// that the agent's hostile-input corpus test and the fault suite's
// real-container case (issue 8, case 8) both draw from, so both attack the
// parser with the same kinds of damage.
package policytest

import (
	"math/rand/v2"
	"strings"
)

// Seeds are valid and nearly valid values per policy field (label
// spelling); several would open everything if a mutation were misread.
var Seeds = map[string][]string{
	"v6reg.ingress": {"tcp/8080 from @office", "tcp/8080 from any", "any from ::/0", "tcp/1-65535 from @internet",
		"udp/53 from @dns", "icmp from @office; tcp/22 from 2001:db8::/32", "tcp/8080 from service:x, job:y"},
	"v6reg.egress":   {"tcp/443 to @internet", "any to any", "tcp/5432 to service:postgres", "udp/0-65535 to ::/0"},
	"v6reg.services": {"web:8080:http", "a:1:tcp", "x:65535:https", "svc:80"},
}

// Keys are the policy fields, in the label spelling of Seeds.
var Keys = []string{"v6reg.ingress", "v6reg.egress", "v6reg.services"}

// edge are the fragments the mutator inserts: separators, numbers at and
// past the limits, NUL, invalid UTF-8, keywords, quoting and
// bidirectional-override characters.
var edge = []string{";", ",", "/", "-", ":", "@", " ", "0", "65536", "99999999999999999999", "-1", "::", "/0", "/129",
	"\x00", "\xff\xfe", "ÿ", "\n", "any", "from", "to", "%", "\\", "\"", "${x}", "\u202e"}

// Mutate returns a hostile variant of s: bytes flipped, inserted or
// deleted, numbers swapped for edge cases, random bytes, or very long
// values (up to hundreds of rules, thousands of separators; at most a
// few hundred kilobytes).
func Mutate(r *rand.Rand, s string) string {
	b := []byte(s)
	for range 1 + r.IntN(4) {
		switch r.IntN(7) {
		case 0:
			if len(b) > 0 {
				b[r.IntN(len(b))] = byte(r.IntN(256)) //nolint:gosec // G115: IntN(256) is in [0, 255]
			}
		case 1:
			i := r.IntN(len(b) + 1)
			b = append(b[:i], append([]byte(edge[r.IntN(len(edge))]), b[i:]...)...)
		case 2:
			if len(b) > 1 {
				i := r.IntN(len(b) - 1)
				b = append(b[:i], b[i+1+r.IntN(len(b)-i-1):]...)
			}
		case 3:
			b = make([]byte, r.IntN(64))
			for i := range b {
				b[i] = byte(r.IntN(256)) //nolint:gosec // G115: IntN(256) is in [0, 255]
			}
		case 4:
			// Repeated once per value: repeating a repeat would grow to
			// megabytes, slowing every case without finding more.
			if len(b) < 1024 {
				b = []byte(strings.Repeat(string(b)+"; ", 1+r.IntN(300)))
			}
		case 5:
			b = []byte(strings.ReplaceAll(string(b), "8080", edge[r.IntN(len(edge))]))
		case 6:
			b = append(b, []byte(strings.Repeat(",", r.IntN(2000)))...)
		}
	}
	return string(b)
}

// Value is a seed of key, mutated three times out of four (a quarter stay
// valid, so that refusals are not all-or-nothing).
func Value(r *rand.Rand, key string) string {
	seeds := Seeds[key]
	v := seeds[r.IntN(len(seeds))]
	if r.IntN(4) > 0 {
		v = Mutate(r, v)
	}
	return v
}
