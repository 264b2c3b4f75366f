// Package text cuts text that containers and jobs control to a size the
// agent keeps and shows.
package text

import "unicode/utf8"

// Cut cuts s to at most n bytes on a rune boundary, marking the cut.
func Cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	const mark = " [...]"
	cut := n - len(mark)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut-- // s[cut] continues a rune that must not be split
	}
	return s[:cut] + mark
}
