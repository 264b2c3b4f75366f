package main

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/v6reg/v6reg/api"
)

// escapeText makes text that containers control (names, labels, Consul
// check output, errors quoting them) safe to print on an operator's
// terminal: control characters (an ESC starts a terminal sequence, a CR
// overwrites the line), bidirectional overrides (they reorder what is
// shown) and invalid UTF-8 are written as Go escapes, \x1b, \u202e.
func escapeText(s string) string {
	clean := true
	for _, r := range s {
		if mustEscape(r) {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n <= 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case !mustEscape(r):
			b.WriteString(s[i : i+n])
		case r < 0x100:
			fmt.Fprintf(&b, `\x%02x`, r)
		default:
			fmt.Fprintf(&b, `\u%04x`, r)
		}
		i += n
	}
	return b.String()
}

func mustEscape(r rune) bool {
	return r == utf8.RuneError || unicode.IsControl(r) ||
		r >= 0x202a && r <= 0x202e || r >= 0x2066 && r <= 0x2069 || r == 0x200e || r == 0x200f || r == 0x061c
}

func escapeAll(ss []string) []string {
	if ss == nil {
		return nil
	}
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = escapeText(s)
	}
	return out
}

// escapeContainer escapes every text field of c that its container or
// job controls, for the text formats (JSON escapes on its own).
func escapeContainer(c api.ContainerState) api.ContainerState {
	for _, p := range []*string{&c.ID, &c.Name, &c.Address, &c.Source, &c.Namespace, &c.Job, &c.Group, &c.Task, &c.AllocID, &c.Reason} {
		*p = escapeText(*p)
	}
	c.Errors = escapeAll(c.Errors)
	rules := func(rs []api.RuleState) []api.RuleState {
		out := make([]api.RuleState, len(rs))
		for i, r := range rs {
			out[i] = api.RuleState{Rule: escapeText(r.Rule), Prefixes: escapeAll(r.Prefixes), Services: escapeAll(r.Services), Jobs: escapeAll(r.Jobs)}
		}
		return out
	}
	c.Ingress, c.Egress = rules(c.Ingress), rules(c.Egress)
	svcs := make([]api.ServiceState, len(c.Services))
	for i, sv := range c.Services {
		sv.ID, sv.Name, sv.Check, sv.Health, sv.Output = escapeText(sv.ID), escapeText(sv.Name), escapeText(sv.Check), escapeText(sv.Health), escapeText(sv.Output)
		sv.Tags = escapeAll(sv.Tags)
		svcs[i] = sv
	}
	c.Services = svcs
	return c
}
