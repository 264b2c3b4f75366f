package config

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
)

// DevStateDir is where `v6reg agent -dev` keeps its state: a temp dir that
// survives agent restarts (so the ULA prefix and leases stay), not reboots.
func DevStateDir() string { return filepath.Join(os.TempDir(), "v6reg-dev") }

// ApplyDev turns c into the development configuration, like `consul agent
// -dev`: a ULA /80 (random per machine, kept in the state dir), state in a
// temp dir, its own Docker network, no Nomad. Fields the operator set in a
// file or the environment are kept.
func (c *Config) ApplyDev() error {
	c.Dev = true
	def := Default()
	if c.StateDir == def.StateDir {
		c.StateDir = DevStateDir()
	}
	if c.APISocket == def.APISocket {
		c.APISocket = filepath.Join(c.StateDir, "v6reg.sock")
	}
	if c.Docker.Network == def.Docker.Network {
		c.Docker.Network = "v6reg-dev"
		c.Docker.BridgeName = "v6reg-dev0"
	}
	if c.Docker.PluginName == def.Docker.PluginName {
		c.Docker.PluginName = "v6reg-dev"
	}
	if c.NodePrefix.IsValid() {
		return nil
	}
	if err := os.MkdirAll(c.StateDir, 0o700); err != nil {
		return fmt.Errorf("creating dev state dir: %w", err)
	}
	pfx, err := devPrefix(filepath.Join(c.StateDir, "dev-prefix"))
	if err != nil {
		return err
	}
	c.NodePrefix = pfx
	return nil
}

// devPrefix reads the dev ULA prefix from path, or makes one: fd00::/8 with
// a random 40-bit global ID (RFC 4193 3.2) and random subnet bits up to /80.
func devPrefix(path string) (netip.Prefix, error) {
	b, err := os.ReadFile(path) //nolint:gosec // G304: path is a file in the configured state dir
	switch {
	case err == nil:
		pfx, perr := ParseNodePrefix(strings.TrimSpace(string(b)))
		if perr != nil {
			return netip.Prefix{}, fmt.Errorf("dev prefix file %s: %w: delete it to get a new prefix", path, perr)
		}
		return pfx, nil
	case !errors.Is(err, fs.ErrNotExist):
		return netip.Prefix{}, fmt.Errorf("reading dev prefix: %w", err)
	}
	var a [16]byte
	if _, err := rand.Read(a[1:10]); err != nil {
		return netip.Prefix{}, fmt.Errorf("generating dev prefix: %w", err)
	}
	a[0] = 0xfd
	pfx := netip.PrefixFrom(netip.AddrFrom16(a), 80).Masked()
	if err := os.WriteFile(path, []byte(pfx.String()+"\n"), 0o600); err != nil {
		return netip.Prefix{}, fmt.Errorf("writing dev prefix: %w", err)
	}
	return pfx, nil
}
