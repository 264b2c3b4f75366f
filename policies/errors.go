package policies

import (
	"strconv"
	"strings"
)

// Level says where a meta value came from.
type Level uint8

// The levels a meta value can come from.
const (
	LevelJob Level = iota + 1
	LevelGroup
	LevelTask
	// LevelLabel is a Docker label of a container started without Nomad.
	LevelLabel
)

func (l Level) String() string {
	switch l {
	case LevelJob:
		return "job"
	case LevelGroup:
		return "group"
	case LevelTask:
		return "task"
	case LevelLabel:
		return "label"
	}
	return "level(" + strconv.Itoa(int(l)) + ")"
}

// Error is one problem with a policy. Its text is user interface: it says
// where (level, key, column), what (Msg, quoting the offending Text), and
// what to do (Hint).
type Error struct {
	Level Level
	// Job, Group and Task locate the meta block the value came from; they
	// are filled for the level of the value only (a job-level error has no
	// Group), so that one error in job meta reads the same for every task.
	Job, Group, Task string
	Key              string // the meta key or label as written; "" if none
	Column           int    // 1-based, in runes; 0 when the whole value is meant
	Text             string // the offending text, "" at end of input
	Msg              string
	Hint             string
}

// Location renders where the error is, e.g.
// `group "web" task "api" meta "v6reg_ingress"`.
func (e *Error) Location() string {
	var parts []string
	switch e.Level {
	case LevelLabel:
		if e.Key != "" {
			return "label " + strconv.Quote(e.Key)
		}
		return "labels"
	case LevelJob:
		if e.Job != "" {
			parts = append(parts, "job "+strconv.Quote(e.Job))
		} else {
			parts = append(parts, "job")
		}
	case LevelGroup:
		parts = append(parts, "group "+strconv.Quote(e.Group))
	case LevelTask:
		parts = append(parts, "group "+strconv.Quote(e.Group), "task "+strconv.Quote(e.Task))
	}
	if e.Key != "" {
		parts = append(parts, "meta "+strconv.Quote(e.Key))
	}
	return strings.Join(parts, " ")
}

// Detail is the error without its location: "column 8: msg; hint".
func (e *Error) Detail() string {
	var b strings.Builder
	if e.Column > 0 {
		b.WriteString("column ")
		b.WriteString(strconv.Itoa(e.Column))
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	if e.Hint != "" {
		b.WriteString("; ")
		b.WriteString(e.Hint)
	}
	return b.String()
}

func (e *Error) Error() string {
	loc := e.Location()
	if loc == "" {
		return e.Detail()
	}
	return loc + ": " + e.Detail()
}

// closest returns the candidate nearest to s by edit distance, if it is
// near enough to be a plausible typo (about one edit per three letters).
func closest(s string, candidates []string) (string, bool) {
	best, bestD := "", len(s)/3+1
	for _, c := range candidates {
		if d := editDistance(s, c); d < bestD || d == 0 {
			best, bestD = c, d
		}
	}
	return best, best != ""
}

// editDistance is the optimal string alignment distance: insertions,
// deletions, substitutions and transpositions of neighbours ("form" is one
// edit from "from").
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 1 << 20 // not a typo; and keeps this cheap on hostile input
	}
	d := make([][]int, len(a)+1)
	for i := range d {
		d[i] = make([]int, len(b)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(a); i++ {
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(a)][len(b)]
}
