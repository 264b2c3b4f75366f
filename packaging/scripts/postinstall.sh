#!/bin/sh
# %post of the v6reg RPM. $1 is 1 on a first install, 2 or more on an
# upgrade (the new files are in place, the old package not yet removed).
# Every systemctl call is guarded: where systemd is not running (a
# container, an image build, rpm --root) the scriptlet still succeeds.

systemd_running() {
	[ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1
}

if systemd_running; then
	systemctl daemon-reload || :
	# /run/docker/plugins must exist before the first start (the unit
	# bind-mounts it writable); at boot tmpfiles.d creates it.
	if command -v systemd-tmpfiles >/dev/null 2>&1; then
		systemd-tmpfiles --create /usr/lib/tmpfiles.d/v6reg.conf || :
	fi
fi

if [ "${1:-1}" -eq 1 ]; then
	# First install: enable (works offline too, e.g. in an image build) but
	# do not start: the agent refuses to run until node_prefix is set.
	if command -v systemctl >/dev/null 2>&1; then
		systemctl --no-reload enable v6reg.service >/dev/null 2>&1 || :
	fi
	echo "v6reg: enabled, not started: set node_prefix in /etc/v6reg/v6reg.hcl, then: systemctl start v6reg"
elif systemd_running; then
	# Upgrade: restart only if it runs. The firewall stays in place while
	# it restarts, and the first reconcile of the new agent adopts it.
	systemctl try-restart v6reg.service || :
fi
exit 0
