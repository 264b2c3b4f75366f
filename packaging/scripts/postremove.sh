#!/bin/sh
# %postun of the v6reg RPM. $1 is 0 on erase, 1 or more on an upgrade.
# Either way systemd must forget (or re-read) the unit file.

if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
	systemctl daemon-reload || :
fi
exit 0
