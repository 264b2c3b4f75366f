package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"github.com/v6reg/v6reg/desired"

	"github.com/hashicorp/nomad/api"

	"github.com/v6reg/v6reg/policies"
)

// loadOperatorConfig reads the agent's HCL config and returns its policy
// part. main.go sets it once the config package exists; until then
// `policy check -config` refuses to run rather than silently check against
// the defaults.
var loadOperatorConfig func(path string) (policies.Operator, error)

// maxJobSize bounds what `policy check` reads: a job is kilobytes, and CI
// pipes can be fed anything.
const maxJobSize = 64 << 20

const policyUsage = `Usage: v6reg policy check [-config FILE] [-format text|json] [-namespace NS] [FILE|-]

Checks the v6reg policies (meta v6reg_ingress, v6reg_egress, v6reg_services,
v6reg_tier) of a Nomad job given as JSON: the API form ({"Job": {...}}, as
'nomad job run -output' prints it) or a bare job object (as GET /v1/job/:id
returns it). Reads standard input when FILE is "-" or missing.

Exit status: 0 no problems, 1 policy errors, 2 unusable input or usage.
`

// runPolicy implements `v6reg policy SUBCOMMAND`; returns the process exit code.
func runPolicy(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, policyUsage)
		return 2
	}
	switch args[0] {
	case "check":
		return runPolicyCheck(args[1:], stdin, stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, policyUsage)
		return 0
	}
	fmt.Fprintf(stderr, "v6reg policy: unknown subcommand %q; the subcommand is check\n\n%s", args[0], policyUsage)
	return 2
}

func runPolicyCheck(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("v6reg policy check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, policyUsage, "\nFlags:\n"); fs.PrintDefaults() }
	configPath := fs.String("config", "", "agent config `file` (HCL) whose namespace bounds, sets and tag templates apply; default: built-in defaults")
	format := fs.String("format", "text", "output `format`: text or json")
	namespace := fs.String("namespace", "", "Nomad `namespace` whose bounds apply; default: the job's, else \"default\"")
	// Flags may follow the file name, as people type them in CI scripts.
	var files []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return 0
			}
			return 2
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		files, args = append(files, args[0]), args[1:]
	}
	if *format != "text" && *format != "json" {
		fmt.Fprintf(stderr, "v6reg policy check: -format %q: the format is text or json\n", *format)
		return 2
	}
	if len(files) > 1 {
		fmt.Fprintf(stderr, "v6reg policy check: %d files given (%s); check one job per run\n", len(files), strings.Join(files, ", "))
		return 2
	}
	op := policies.DefaultOperator()
	if *configPath != "" {
		if loadOperatorConfig == nil {
			fmt.Fprintf(stderr, "v6reg policy check: -config %s: this build cannot read agent config files yet; run without -config to check against the built-in defaults\n", *configPath)
			return 2
		}
		var err error
		if op, err = loadOperatorConfig(*configPath); err != nil {
			fmt.Fprintf(stderr, "v6reg policy check: reading config %s: %v\n", *configPath, err)
			return 2
		}
		if err := op.Validate(); err != nil {
			fmt.Fprintf(stderr, "v6reg policy check: config %s is invalid:\n%v\n", *configPath, err)
			return 2
		}
	}
	name := "-"
	if len(files) == 1 {
		name = files[0]
	}
	data, err := readJob(name, stdin)
	if err != nil {
		fmt.Fprintf(stderr, "v6reg policy check: %v\n", err)
		return 2
	}
	if name == "-" {
		name = "standard input"
	}
	job, err := decodeJob(data)
	if err != nil {
		fmt.Fprintf(stderr, "v6reg policy check: %s: %v\n", name, err)
		return 2
	}
	report := checkJob(job, *namespace, op)
	if *format == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(report); err != nil {
			fmt.Fprintf(stderr, "v6reg policy check: writing report: %v\n", err)
			return 2
		}
	} else {
		writeTextReport(stdout, report)
	}
	if len(report.Errors) > 0 {
		return 1
	}
	return 0
}

func readJob(name string, stdin io.Reader) ([]byte, error) {
	r := stdin
	if name != "-" {
		f, err := os.Open(name) //nolint:gosec // G304: the user names the job file to check
		if err != nil {
			return nil, fmt.Errorf("reading job: %w", err)
		}
		defer func() { _ = f.Close() }() // read-only: a failed close loses nothing
		r = f
	} else if r == nil {
		return nil, errors.New("reading job: no file given and no standard input")
	}
	data, err := io.ReadAll(io.LimitReader(r, maxJobSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading job %s: %w", name, err)
	}
	if len(data) > maxJobSize {
		return nil, fmt.Errorf("reading job %s: larger than %d MiB; is this a Nomad job?", name, maxJobSize>>20)
	}
	return data, nil
}

// decodeJob accepts {"Job": {...}} (the API register form, and what
// `nomad job run -output` prints) and a bare job object (GET /v1/job/:id).
func decodeJob(data []byte) (*api.Job, error) {
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 {
		return nil, errors.New("empty input; expected a Nomad job as JSON")
	}
	if trimmed[0] != '{' {
		hint := ""
		if bytes.HasPrefix(trimmed, []byte("job")) || bytes.Contains(trimmed, []byte("job \"")) {
			hint = "; this looks like HCL: convert it with 'nomad job run -output FILE'"
		}
		return nil, fmt.Errorf("line 1: expected a JSON object (a Nomad job)%s", hint)
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil {
		return nil, jsonError(data, 0, err)
	}
	body, base := data, 0
	if raw, ok := top["Job"]; ok {
		if t := bytes.TrimSpace(raw); len(t) == 0 || t[0] != '{' {
			return nil, fmt.Errorf("%s: \"Job\" is not an object", position(data, bytes.Index(data, raw)))
		}
		// RawMessage is a verbatim copy, so its first occurrence locates it
		// for line numbers in errors.
		body, base = raw, max(bytes.Index(data, raw), 0)
	} else if _, ok := top["job"]; ok {
		return nil, errors.New("this is an HCL-JSON jobspec ({\"job\": ...}); convert it with 'nomad job run -output FILE'")
	} else if _, ok := top["TaskGroups"]; !ok {
		if _, ok := top["ID"]; !ok {
			return nil, errors.New("no Nomad job found: expected {\"Job\": {...}} or a job object with ID and TaskGroups")
		}
	}
	var job api.Job
	if err := json.Unmarshal(body, &job); err != nil {
		return nil, jsonError(data, base, err)
	}
	if len(job.TaskGroups) == 0 {
		return nil, errors.New("the job has no task groups (TaskGroups is empty)")
	}
	for i, tg := range job.TaskGroups {
		if tg == nil {
			return nil, fmt.Errorf("TaskGroups[%d] is null", i)
		}
	}
	return &job, nil
}

func jsonError(data []byte, base int, err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		// Offset counts the offending byte; point at it, not after it.
		return fmt.Errorf("%s: invalid JSON: %w", position(data, base+int(syn.Offset)-1), err)
	case errors.As(err, &typ):
		field := typ.Field
		if field == "" {
			field = "value"
		}
		return fmt.Errorf("%s: %s: a JSON %s where a Nomad job has a %s", position(data, base+int(typ.Offset)), field, typ.Value, typ.Type)
	}
	return fmt.Errorf("decoding job: %w", err)
}

// position turns a byte offset into "line L, column C" (1-based).
func position(data []byte, off int) string {
	off = min(max(off, 0), len(data))
	line := 1 + bytes.Count(data[:off], []byte("\n"))
	col := off - bytes.LastIndexByte(data[:off], '\n')
	return fmt.Sprintf("line %d, column %d", line, col)
}

type checkReport struct {
	Job       string        `json:"job"`
	Namespace string        `json:"namespace"`
	Groups    int           `json:"groups"`
	OK        bool          `json:"ok"`
	Errors    []checkError  `json:"errors"`
	Tasks     []checkedTask `json:"tasks"`
}

type checkError struct {
	Error    string `json:"error"`
	Location string `json:"location"`
	Level    string `json:"level"`
	Group    string `json:"group,omitempty"`
	Task     string `json:"task,omitempty"`
	Key      string `json:"key,omitempty"`
	Column   int    `json:"column,omitempty"`
	Text     string `json:"text,omitempty"`
	Message  string `json:"message"`
	Hint     string `json:"hint,omitempty"`
}

type checkedTask struct {
	Group    string         `json:"group"`
	Task     string         `json:"task"`
	Tier     string         `json:"tier,omitempty"`
	Ingress  []string       `json:"ingress"`
	Egress   []string       `json:"egress"`
	Services []checkService `json:"services"`
}

type checkService struct {
	Name  string   `json:"name"`
	Port  uint16   `json:"port"`
	Check string   `json:"check"`
	Path  string   `json:"path,omitempty"` // of an http(s) check
	Tags  []string `json:"tags"`
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// checkJob evaluates every task of the job. An error in job or group meta
// would otherwise be reported once per task; it is reported once.
func checkJob(job *api.Job, namespace string, op policies.Operator) checkReport {
	name := deref(job.Name)
	if name == "" {
		name = deref(job.ID)
	}
	if namespace == "" {
		namespace = deref(job.Namespace)
	}
	if namespace == "" {
		namespace = "default"
	}
	rep := checkReport{Job: name, Namespace: namespace, Groups: len(job.TaskGroups), Errors: []checkError{}, Tasks: []checkedTask{}}
	seen := map[string]bool{}
	// order sorts errors job first, then each group followed by its tasks,
	// as the job file reads.
	var order []int
	for gi, tg := range job.TaskGroups {
		for _, task := range tg.Tasks {
			if task == nil {
				continue
			}
			meta := policies.FromNomad(job.Meta, tg.Meta, task.Meta)
			pol, errs := policies.Evaluate(meta, policies.Context{Namespace: namespace, Job: name, Group: deref(tg.Name), Task: task.Name}, op)
			// The per-container limits, as the agent holds them (with
			// service:/job: peers counted empty: their size is the node's).
			errs = append(errs, desired.ContainerLimitErrors(pol, namespace, op, deref(tg.Name), task.Name)...)
			for _, e := range errs {
				text := e.Error()
				if seen[text] {
					continue
				}
				seen[text] = true
				if e.Level == policies.LevelJob {
					order = append(order, -1)
				} else {
					order = append(order, gi)
				}
				rep.Errors = append(rep.Errors, checkError{Error: text, Location: e.Location(), Level: e.Level.String(), Group: e.Group, Task: e.Task,
					Key: e.Key, Column: e.Column, Text: e.Text, Message: e.Msg, Hint: e.Hint})
			}
			ct := checkedTask{Group: deref(tg.Name), Task: task.Name, Tier: pol.Tier, Ingress: []string{}, Egress: []string{}, Services: []checkService{}}
			for _, r := range pol.Ingress {
				ct.Ingress = append(ct.Ingress, r.Source)
			}
			for _, r := range pol.Egress {
				ct.Egress = append(ct.Egress, r.Source)
			}
			for _, s := range pol.Services {
				tags := s.Tags
				if tags == nil {
					tags = []string{}
				}
				cs := checkService{Name: s.Name, Port: s.Port, Check: s.Check.String(), Tags: tags}
				if s.Check != policies.CheckTCP {
					cs.Path = s.Path
				}
				ct.Services = append(ct.Services, cs)
			}
			rep.Tasks = append(rep.Tasks, ct)
		}
	}
	idx := make([]int, len(rep.Errors))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool { return order[idx[a]] < order[idx[b]] })
	sorted := make([]checkError, len(idx))
	for i, j := range idx {
		sorted[i] = rep.Errors[j]
	}
	rep.Errors = sorted
	rep.OK = len(rep.Errors) == 0
	return rep
}

func writeTextReport(w io.Writer, rep checkReport) {
	for _, e := range rep.Errors {
		fmt.Fprintln(w, e.Error)
	}
	switch n := len(rep.Errors); n {
	case 0:
		fmt.Fprintf(w, "job %q (namespace %q): %s, %s: ok\n", rep.Job, rep.Namespace, plural(rep.Groups, "group"), plural(len(rep.Tasks), "task"))
	case 1:
		fmt.Fprintf(w, "job %q (namespace %q): 1 error\n", rep.Job, rep.Namespace)
	default:
		fmt.Fprintf(w, "job %q (namespace %q): %d errors\n", rep.Job, rep.Namespace, n)
	}
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
