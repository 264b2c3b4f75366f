package policies

import (
	"slices"
	"strings"
)

// Field names a policy key without its prefix: "ingress", "egress",
// "services", "tier". Each is spelled "v6reg_FIELD" (Nomad meta blocks
// cannot hold a dot in an attribute name) or "v6reg.FIELD" (Docker labels,
// and Nomad's map form meta = { ... }).
type Field string

// The policy fields v6reg reads.
const (
	FieldIngress  Field = "ingress"
	FieldEgress   Field = "egress"
	FieldServices Field = "services"
	FieldTier     Field = "tier"
)

var fields = []Field{FieldIngress, FieldEgress, FieldServices, FieldTier}

// labelIdentity are the label keys (v6reg.job, v6reg.namespace) that give a
// container started without Nomad the job and namespace Nomad would give
// it: what job:NAME peers, bounds and tag templates see. They are not
// policy, so only labels may carry them.
var labelIdentity = []string{"job", "namespace"}

// Key returns the underscore spelling used in Nomad meta blocks.
func (f Field) Key() string { return "v6reg_" + string(f) }

// Label returns the dotted spelling used in Docker labels.
func (f Field) Label() string { return "v6reg." + string(f) }

// Value is one policy key after merging: its text and where it came from.
type Value struct {
	Text  string
	Key   string // the key as written; "" when no level set it
	Level Level
}

// Set reports whether some level set the key.
func (v Value) Set() bool { return v.Key != "" }

// Meta is the merged policy meta of one task (or one container's labels).
type Meta struct {
	Ingress, Egress, Services, Tier Value
	// errs are problems found while merging (both spellings at one level,
	// unknown v6reg keys); Evaluate reports them with its own.
	errs []*Error
}

func (m *Meta) field(f Field) *Value {
	switch f {
	case FieldIngress:
		return &m.Ingress
	case FieldEgress:
		return &m.Egress
	case FieldServices:
		return &m.Services
	default:
		return &m.Tier
	}
}

// Errors returns the problems found while merging.
func (m Meta) Errors() []*Error { return m.errs }

// FromNomad merges job, group and task meta the way Nomad does: per key,
// task overrides group overrides job. Either spelling of a key counts as
// the same key, so a task's "v6reg.ingress" overrides the job's
// "v6reg_ingress". Both spellings in the same meta map is an error (which
// one wins would depend on how the job was written), and the key is then
// treated as set to nothing, so the container stays closed rather than
// silently falling back to an outer level.
func FromNomad(job, group, task map[string]string) Meta {
	var m Meta
	m.apply(job, LevelJob)
	m.apply(group, LevelGroup)
	m.apply(task, LevelTask)
	return m
}

// FromLabels reads the policy from the Docker labels of a container started
// without Nomad. The dotted spelling is the convention; the underscore one is
// accepted too.
func FromLabels(labels map[string]string) Meta {
	var m Meta
	m.apply(labels, LevelLabel)
	return m
}

func (m *Meta) apply(meta map[string]string, level Level) {
	keys := make([]string, 0, len(meta))
	for k := range meta {
		keys = append(keys, k)
	}
	slices.Sort(keys) // errors in a stable order
	for _, f := range fields {
		u, uok := meta[f.Key()]
		d, dok := meta[f.Label()]
		switch {
		case uok && dok:
			*m.field(f) = Value{Key: f.Key(), Level: level}
			m.errs = append(m.errs, &Error{Level: level, Key: f.Label(),
				Msg:  "both " + f.Key() + " and " + f.Label() + " are set",
				Hint: "keep one of them: they are the same key"})
		case uok:
			*m.field(f) = Value{Text: u, Key: f.Key(), Level: level}
		case dok:
			*m.field(f) = Value{Text: d, Key: f.Label(), Level: level}
		}
	}
	for _, k := range keys {
		rest, ok := strings.CutPrefix(k, "v6reg")
		if !ok || rest == "" || rest[0] != '_' && rest[0] != '.' {
			continue
		}
		if slices.Contains(fields, Field(rest[1:])) {
			continue
		}
		if level == LevelLabel && slices.Contains(labelIdentity, rest[1:]) {
			continue
		}
		known := make([]string, 0, 2*len(fields))
		for _, f := range fields {
			known = append(known, f.Key(), f.Label())
		}
		hint := "the v6reg keys are " + strings.Join(known, ", ")
		if c, ok := closest(k, known); ok {
			hint = "did you mean " + c + "?"
		}
		m.errs = append(m.errs, &Error{Level: level, Key: k, Msg: "unknown v6reg key", Hint: hint})
	}
}
