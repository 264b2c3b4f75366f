#!/bin/sh
# %preun of the v6reg RPM. $1 is 0 on erase, 1 or more on an upgrade (then
# nothing to do: %post of the new version restarts the agent).
# Stopping leaves table inet v6reg in place: containers stay closed to what
# their policy does not allow. To remove it after an erase:
#   nft delete table inet v6reg

if [ "${1:-0}" -eq 0 ] && command -v systemctl >/dev/null 2>&1; then
	if [ -d /run/systemd/system ]; then
		systemctl --no-reload disable --now v6reg.service || :
	else
		systemctl --no-reload disable v6reg.service >/dev/null 2>&1 || :
	fi
fi
exit 0
