package integration

// Fault cases of issue 16: the agent restarts while Nomad or Consul does
// not answer, and a node boots with Nomad late. Running jobs must keep
// their traffic and their registrations throughout.

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// restartEnv is the topology of the restart cases: besides the sentinel
// web (labels, service web), a Nomad container a (fake Nomad, allocation
// allocA, service nomadweb) and two containers whose policies name each
// other by job: peers (Consul-backed sets), the client probing the server
// from inside every 100 ms.
type restartEnv struct {
	*faultEnv
	nomad      *fakeNomad
	a, db, cli Workload
}

func newRestartEnv(t *testing.T, dockerArgs ...string) *restartEnv {
	t.Helper()
	n := newFakeNomad(t)
	n.services = "nomadweb:8080:http"
	n.set(allocA)
	t.Cleanup(n.stop)
	f := newFaultEnvPrep(t, n.prep(t), dockerArgs...)
	r := &restartEnv{faultEnv: f, nomad: n}
	r.a = f.run("web-"+allocA, nomadLabels(allocA), httpdShell(8080, "a"), false)
	r.db = f.run("fault-db", map[string]string{"v6reg.job": "fault-db", "v6reg.ingress": "tcp/5432 from job:fault-cli", "v6reg.services": "db:5432:tcp"}, httpdShell(5432, "db"), false)
	loop := fmt.Sprintf("while true; do if /bin/v6probe %s 5432 1s >/dev/null 2>&1; then echo ok; else echo FAIL $(busybox date +%%s); fi >> /tmp/probe.log; sleep 0.1; done", r.db.Addr)
	r.cli = f.run("fault-cli", map[string]string{"v6reg.job": "fault-cli", "v6reg.egress": "tcp/5432 to job:fault-db"}, loop, false)
	f.waitOpen(r.a, r.db, r.cli)
	// Generous: a job: peer set follows Consul's catalog, which took up
	// to 16 s to list a new registration here.
	if err := WaitFor(f.ctx, 45*time.Second, func() error {
		if ok, failed := r.cliProbes(); ok == 0 {
			_, out, err := r.Exec(r.ctx, r.cli.ID, "sh", "-c", "tail -3 /tmp/probe.log; /bin/v6probe "+r.db.Addr.String()+" 5432 1s 2>&1")
			return fmt.Errorf("cli -> db:5432 has not passed yet (%d failed; %q, %v)", failed, out, err)
		}
		return nil
	}); err != nil {
		t.Fatalf("before the fault: %v", err)
	}
	f.invariants(15 * time.Second)
	return r
}

// cliProbes counts the in-container probes cli -> db:5432 so far.
func (r *restartEnv) cliProbes() (ok, failed int) {
	_, out, err := r.Exec(r.ctx, r.cli.ID, "cat", "/tmp/probe.log")
	if err != nil {
		return 0, 0
	}
	return strings.Count(out, "ok"), strings.Count(out, "FAIL")
}

// registrations lists v6reg's registrations in Consul (ID -> address).
func (r *restartEnv) registrations() map[string]string {
	r.t.Helper()
	regs, err := ownedRegistrations(r.Env)
	if err != nil {
		r.t.Fatal(err)
	}
	return regs
}

// prober sends office -> a:8080 and office -> web:8080 every 100 ms and
// counts what does not pass.
type prober struct {
	sent, failed atomic.Int64
	mu           sync.Mutex
	firstFail    string
	stop         chan struct{}
	done         sync.WaitGroup
}

func (r *restartEnv) probe() *prober {
	p := &prober{stop: make(chan struct{})}
	p.done.Add(1)
	go func() {
		defer p.done.Done()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-p.stop:
				return
			case <-tick.C:
			}
			for _, w := range []Workload{r.a, r.web} {
				p.sent.Add(1)
				if err := HTTPGet(r.Office, w.Addr, 8080, time.Second); err != nil {
					p.failed.Add(1)
					p.mu.Lock()
					if p.firstFail == "" {
						p.firstFail = fmt.Sprintf("%s at %s: %v", w.Name, time.Now().Format("15:04:05.000"), err)
					}
					p.mu.Unlock()
				}
			}
		}
	}()
	return p
}

func (p *prober) end() { close(p.stop); p.done.Wait() }

// check ends the probes and fails the test for any allowed probe dropped,
// any registration lost or any deregistration the agent made; it returns
// the figures for the row.
func (r *restartEnv) check(p *prober, regs0 map[string]string, dereg0 int, cliOK0, cliFail0 int) string {
	r.t.Helper()
	p.end()
	okN, failN := r.cliProbes()
	if p.failed.Load() != 0 {
		r.t.Errorf("%d of %d allowed probes office -> a, web failed; first: %s", p.failed.Load(), p.sent.Load(), p.firstFail)
	}
	if failN != cliFail0 {
		r.t.Errorf("%d allowed probes cli -> db:5432 (job: peers) failed", failN-cliFail0)
	}
	lost := 0
	if err := WaitFor(r.ctx, 30*time.Second, func() error {
		now := r.registrations()
		lost = 0
		for id := range regs0 {
			if _, ok := now[id]; !ok {
				lost++
			}
		}
		if lost > 0 {
			return fmt.Errorf("%d registrations missing", lost)
		}
		return nil
	}); err != nil {
		r.t.Errorf("registrations after the fault: %v", err)
	}
	dereg := r.logCount(`msg="consul deregister"`) - dereg0
	if dereg != 0 {
		r.t.Errorf("the agent deregistered %d services during the fault", dereg)
	}
	r.invariants(30 * time.Second)
	return fmt.Sprintf("office -> a (Nomad), web: %d probes, %d dropped; cli -> db (job: peers, in the container): %d probes, %d dropped; registrations %d before, %d lost, %d deregistrations",
		p.sent.Load(), p.failed.Load(), okN-cliOK0+failN-cliFail0, failN-cliFail0, len(regs0), lost, dereg)
}

// start records what the checks compare with and starts the probes.
func (r *restartEnv) start() (p *prober, regs0 map[string]string, dereg0, cliOK0, cliFail0 int) {
	r.t.Helper()
	regs0 = r.registrations()
	if len(regs0) < 4 { // web, nomadweb, db, and the v6reg-jobs instances
		r.t.Fatalf("registrations before the fault: %v", regs0)
	}
	cliOK0, cliFail0 = r.cliProbes()
	return r.probe(), regs0, r.logCount(`msg="consul deregister"`), cliOK0, cliFail0
}

// waitNomadOK waits until the agent uses Nomad's answer again (the status
// says ok) and returns how long that took.
func (r *restartEnv) waitNomadOK(when string) time.Duration {
	r.t.Helper()
	up := time.Now()
	if err := WaitFor(r.ctx, 30*time.Second, func() error {
		s, err := r.Status()
		if err != nil {
			return err
		}
		if s.Nomad != "ok" {
			return fmt.Errorf("nomad %q", s.Nomad)
		}
		return nil
	}); err != nil {
		r.t.Errorf("%s: %v", when, err)
	}
	return time.Since(up)
}

// nomadDownAfterRestart is how long Nomad stays away after the restart:
// past the 15 s the agent used to wait before closing unknown allocations,
// and past a 10 s resync.
const nomadDownAfterRestart = 25 * time.Second

func TestFaults11RestartWhileNomadDown(t *testing.T) {
	requireSlowFaults(t)
	row := recordFault(t, "11", "agent restarted while Nomad is down",
		fmt.Sprintf("the fake Nomad API (recorded fixture) stopped 2 s before an agent restart (SIGTERM) and kept away %s after it; a Nomad container with a service, a sentinel, and two containers whose policies name each other by job: peers", nomadDownAfterRestart),
		"probes every 100 ms from before the outage to after Nomad answers: office -> a:8080 and web:8080, cli -> db:5432 from inside cli; 0 allowed probes dropped; every registration still there, no deregistration; status says the persisted allocations are in use; invariants")
	r := newRestartEnv(t)
	p, regs0, dereg0, ok0, fail0 := r.start()
	time.Sleep(time.Second)
	r.nomad.stop()
	time.Sleep(2 * time.Second)
	down := r.restartAgent(syscall.SIGTERM)
	restarted := time.Now()
	s, err := r.Status()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(s.Nomad, "persisted") {
		t.Errorf("status after the restart: nomad %q; want the persisted allocations in use", s.Nomad)
	}
	for _, c := range s.Containers {
		if c.Closed {
			t.Errorf("%s closed after the restart: %s", c.Name, c.Reason)
		}
	}
	time.Sleep(time.Until(restarted.Add(nomadDownAfterRestart)))
	if err := r.nomad.start(r.Node); err != nil {
		t.Fatal(err)
	}
	synced := r.waitNomadOK("after Nomad came back")
	time.Sleep(2 * time.Second)
	figs := r.check(p, regs0, dereg0, ok0, fail0)
	row.fig(t, "agent restart %s with Nomad down %s before and %s after; Nomad answered again and in use %s later; %s",
		down.Round(100*time.Millisecond), 2*time.Second, nomadDownAfterRestart, synced.Round(10*time.Millisecond), figs)
}

func TestFaults12RestartWhileConsulDown(t *testing.T) {
	requireSlowFaults(t)
	const after = 30 * time.Second
	row := recordFault(t, "12", "agent restarted while Consul is down",
		fmt.Sprintf("Consul frozen (SIGSTOP) 2 s before an agent restart (SIGTERM) and kept frozen %s after it; the same containers as case 11 (job: peer sets come from Consul)", after),
		"as case 11: 0 allowed probes dropped (the job: peer sets are the last known, not empty), every registration still there after SIGCONT, no deregistration; invariants")
	r := newRestartEnv(t)
	p, regs0, dereg0, ok0, fail0 := r.start()
	time.Sleep(time.Second)
	pid := consulProcess(t, r.faultEnv)
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	cont := func() { _ = syscall.Kill(pid, syscall.SIGCONT) }
	defer cont()
	time.Sleep(2 * time.Second)
	down := r.restartAgent(syscall.SIGTERM)
	restarted := time.Now()
	time.Sleep(time.Until(restarted.Add(after)))
	cont()
	time.Sleep(3 * time.Second)
	figs := r.check(p, regs0, dereg0, ok0, fail0)
	row.fig(t, "agent restart %s with Consul frozen 2s before and %s after; %s", down.Round(100*time.Millisecond), after, figs)
}

func TestFaults13BootNomadLate(t *testing.T) {
	requireSlowFaults(t)
	late := time.Duration(envInt("V6REG_FAULT_NOMAD_LATE_SECONDS", 45)) * time.Second
	row := recordFault(t, "13", "node boot order: dockerd (live-restore), v6reg, Nomad late",
		fmt.Sprintf("dockerd runs with --live-restore; v6reg stopped (SIGTERM) and the fake Nomad stopped, dockerd restarted (containers keep running), then v6reg started, then Nomad %s later (minutes on a real node, compressed for CI)", late),
		"as case 11 from the v6reg stop to after Nomad answers: 0 allowed probes dropped, every registration still there, no deregistration; the same containers and addresses; invariants")
	r := newRestartEnv(t, "--live-restore")
	p, regs0, dereg0, ok0, fail0 := r.start()
	ids := map[string]netip.Addr{r.a.ID: r.a.Addr, r.db.ID: r.db.Addr, r.cli.ID: r.cli.Addr, r.web.ID: r.web.Addr}
	time.Sleep(time.Second)
	r.StopAgent(syscall.SIGTERM)
	r.nomad.stop()
	t0 := time.Now()
	if err := r.Docker.Restart(r.ctx); err != nil {
		t.Fatalf("restarting dockerd: %v", err)
	}
	dockerUp := time.Since(t0)
	if err := r.StartAgent(r.ctx); err != nil {
		t.Fatal(err)
	}
	agentUp := time.Since(t0)
	time.Sleep(time.Until(t0.Add(agentUp + late)))
	if err := r.nomad.start(r.Node); err != nil {
		t.Fatal(err)
	}
	synced := r.waitNomadOK("after Nomad came up")
	time.Sleep(2 * time.Second)
	run, err := r.running(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for id, addr := range ids {
		if m, ok := run[id]; !ok || m.Addr != addr {
			t.Errorf("container %s at %s did not keep running at its address across the dockerd restart (now %+v)", shortID(id), addr, m)
		}
	}
	figs := r.check(p, regs0, dereg0, ok0, fail0)
	row.fig(t, "dockerd back %s after the v6reg stop, v6reg ready %s after it, Nomad %s later, in use %s after it answered; %s",
		dockerUp.Round(100*time.Millisecond), agentUp.Round(100*time.Millisecond), late, synced.Round(10*time.Millisecond), figs)
}
