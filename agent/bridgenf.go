package agent

import (
	"context"
	"strings"
	"time"
)

// BridgeNetfilter makes bridged traffic cross the firewall's hooks
// (firewall.EnableBridgeNetfilter): it returns the settings it had to turn
// back on, or why it cannot.
type BridgeNetfilter func() (fixed []string, err error)

// bridgeNFInterval is how often the agent checks br_netfilter: as often as
// the firewall checks its table, since while it is off containers on the
// bridge reach each other past every rule.
var bridgeNFInterval = time.Second

// keepBridgeNetfilter checks br_netfilter until ctx ends, restores what it
// can, and keeps the verdict for status, /healthz and the metrics.
func (a *Agent) keepBridgeNetfilter(ctx context.Context, check BridgeNetfilter) {
	ok, restored := a.o.Metrics.BridgeNetfilterOK, a.o.Metrics.BridgeNetfilterRestored
	t := time.NewTicker(bridgeNFInterval)
	defer t.Stop()
	last := "unchecked"
	for {
		fixed, err := check()
		msg := ""
		if err != nil {
			msg = err.Error()
			ok.Set(0)
		} else {
			ok.Set(1)
		}
		if len(fixed) > 0 {
			restored.Add(float64(len(fixed)))
			a.log.Warn("bridged traffic bypassed the firewall: turned bridge netfilter back on", "sysctls", strings.Join(fixed, " "))
		}
		if msg != last {
			if msg != "" {
				a.log.Error("bridged traffic between containers bypasses the firewall", "err", msg)
			} else if last != "unchecked" {
				a.log.Info("bridge netfilter is on again")
			}
			a.bridgeNFErr.Store(&msg)
			last = msg
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// bridgeNFProblem is the last br_netfilter check's error ("" when fine or
// not checked).
func (a *Agent) bridgeNFProblem() string {
	if p := a.bridgeNFErr.Load(); p != nil {
		return *p
	}
	return ""
}
