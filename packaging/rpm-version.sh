#!/bin/sh
# Prints the RPM version of the working tree, from git. RPM forbids '-' in
# a version and compares segment by segment, so:
#   tag v1.2.3                      -> 1.2.3
#   tag v1.2.3-rc1                  -> 1.2.3~rc1        (before 1.2.3)
#   5 commits after v1.2.3          -> 1.2.3.5.g73f7df7 (after 1.2.3, before 1.2.4)
#   no tag yet, 4 commits           -> 0.0.0.4.g73f7df7
#   uncommitted changes             -> ... .dirty
#   no git (a source tarball)       -> 0.0.0
# The commit count keeps untagged builds in upgrade order.
set -eu
cd "$(dirname "$0")/.."

if ! git rev-parse --verify -q HEAD >/dev/null 2>&1; then
	echo 0.0.0
	exit 0
fi
dirty=
if git describe --always --dirty 2>/dev/null | grep -q -- '-dirty$'; then
	dirty=.dirty
fi
if desc=$(git describe --tags --match 'v[0-9]*' 2>/dev/null); then
	v=$(printf '%s\n' "${desc#v}" | sed -E 's/-([0-9]+)-g([0-9a-f]+)$/.\1.g\2/; s/-/~/g')
else
	v=0.0.0.$(git rev-list --count HEAD).g$(git rev-parse --short HEAD)
fi
# Whatever a tag holds, only these characters are safe in an RPM version.
printf '%s%s\n' "$v" "$dirty" | tr -c 'A-Za-z0-9._+~\n' '_'
