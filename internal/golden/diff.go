package golden

import (
	"fmt"
	"strings"
)

// contextLines is how many unchanged lines lineDiff shows around a change.
const contextLines = 3

// maxCells bounds the LCS table (lines of want × lines of got, after the
// common head and tail are cut); past it the differing middle is shown
// whole, as removed then added.
const maxCells = 4 << 20

// edit is one line of a diff: ' ' kept, '-' only in want, '+' only in got.
// wantLine and gotLine are 1-based positions the line has (or would have)
// in each text.
type edit struct {
	op                byte
	text              string
	wantLine, gotLine int
}

// lineDiff is a unified-style diff from want to got: the changed lines with
// a few around them, and "@@ file line N, output line M @@" before each
// group. A last line without a newline is marked, so that a missing
// trailing newline shows.
func lineDiff(want, got string) string {
	a, b := splitLines(want), splitLines(got)
	head := 0
	for head < len(a) && head < len(b) && a[head] == b[head] {
		head++
	}
	tail := 0
	for tail < len(a)-head && tail < len(b)-head && a[len(a)-1-tail] == b[len(b)-1-tail] {
		tail++
	}
	var edits []edit
	for i := 0; i < head; i++ {
		edits = append(edits, edit{' ', a[i], i + 1, i + 1})
	}
	for _, e := range middle(a[head:len(a)-tail], b[head:len(b)-tail]) {
		e.wantLine += head
		e.gotLine += head
		edits = append(edits, e)
	}
	for k := tail; k > 0; k-- {
		i, j := len(a)-k, len(b)-k
		edits = append(edits, edit{' ', a[i], i + 1, j + 1})
	}
	return format(edits)
}

// middle diffs the lines between the common head and tail by longest
// common subsequence; positions are relative to a and b.
func middle(a, b []string) []edit {
	var out []edit
	if len(a)*len(b) > maxCells {
		for i, l := range a {
			out = append(out, edit{'-', l, i + 1, 1})
		}
		for j, l := range b {
			out = append(out, edit{'+', l, len(a) + 1, j + 1})
		}
		return out
	}
	// lcs[i][j] is the LCS length of a[i:] and b[j:].
	lcs := make([][]int, len(a)+1)
	for i := range lcs {
		lcs[i] = make([]int, len(b)+1)
	}
	for i := len(a) - 1; i >= 0; i-- {
		for j := len(b) - 1; j >= 0; j-- {
			if a[i] == b[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		switch {
		case i < len(a) && j < len(b) && a[i] == b[j]:
			out = append(out, edit{' ', a[i], i + 1, j + 1})
			i++
			j++
		case i < len(a) && (j == len(b) || lcs[i+1][j] >= lcs[i][j+1]):
			out = append(out, edit{'-', a[i], i + 1, j + 1})
			i++
		default:
			out = append(out, edit{'+', b[j], i + 1, j + 1})
			j++
		}
	}
	return out
}

// format prints the changed edits with context lines around them.
func format(edits []edit) string {
	show := make([]bool, len(edits))
	for k, e := range edits {
		if e.op == ' ' {
			continue
		}
		for c := max(0, k-contextLines); c <= min(len(edits)-1, k+contextLines); c++ {
			show[c] = true
		}
	}
	var sb strings.Builder
	for k, e := range edits {
		if !show[k] {
			continue
		}
		if k == 0 || !show[k-1] {
			fmt.Fprintf(&sb, "@@ file line %d, output line %d @@\n", e.wantLine, e.gotLine)
		}
		text, nl := strings.CutSuffix(e.text, "\n")
		sb.WriteByte(e.op)
		sb.WriteByte(' ')
		sb.WriteString(text)
		if !nl {
			sb.WriteString("  [no newline at end]")
		}
		sb.WriteByte('\n')
	}
	return sb.String()
}

// splitLines cuts s after each newline; a last line without one is kept
// as it is.
func splitLines(s string) []string {
	lines := strings.SplitAfter(s, "\n")
	if lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	return lines
}
