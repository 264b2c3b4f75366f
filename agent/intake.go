package agent

import "time"

// pendingWork is what the sources asked of the reconcile loop since it
// last ran: the containers events named (with when each was first
// named, for the event-to-applied figures), and whether everything must
// be listed again.
type pendingWork struct {
	since      time.Time // oldest unserved trigger
	containers map[string]time.Time
	relist     bool
	consul     bool // Consul may have lost registrations: list it again
}

// dockerIntake is the dockerSink of the agent.
type dockerIntake struct{ a *Agent }

func (d dockerIntake) ContainerEvent(id, reason string) {
	d.a.pendMu.Lock()
	if d.a.pend.containers == nil {
		d.a.pend.containers = map[string]time.Time{}
	}
	if _, ok := d.a.pend.containers[id]; !ok {
		d.a.pend.containers[id] = time.Now()
	}
	d.a.pendMu.Unlock()
	d.a.Trigger(reason)
}

func (d dockerIntake) RelistEvent(reason string) {
	d.a.pendMu.Lock()
	d.a.pend.relist = true
	d.a.pendMu.Unlock()
	d.a.Trigger(reason)
}
