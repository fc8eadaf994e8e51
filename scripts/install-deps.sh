#!/usr/bin/env bash
# Installs the Debian packages of scripts/programs.txt (the one list of programs
# the cloud, its build and its tests run), only those missing. Safe to run twice.
#
#   scripts/install-deps.sh                  everything (make up, make test, CI)
#   scripts/install-deps.sh --groups image   only the programs of these groups (comma-separated)
#   scripts/install-deps.sh --list           print the packages it would ensure, one a line
set -euo pipefail
LIST="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/programs.txt"
list_only=0
groups=""
while [ $# -gt 0 ]; do
  case "$1" in
    --list) list_only=1 ;;
    --groups) groups="$2"; shift ;;
    *) echo "usage: $0 [--groups G1,G2] [--list]" >&2; exit 2 ;;
  esac
  shift
done

wanted() { # wanted GROUPS: whether an entry of these groups is asked for ("all": always)
  [ -z "$groups" ] && return 0
  [[ ",$1," == *",all,"* ]] && return 0
  local g
  for g in ${1//,/ }; do
    [[ ",$groups," == *",$g,"* ]] && return 0
  done
  return 1
}

packages=()
missing=()
while read -r program package entry_groups; do
  [ "$package" = project ] && continue
  wanted "$entry_groups" || continue
  packages+=("$package")
  if [ "$program" = - ]; then
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null)" = installed ] \
      || missing+=("$package")
  else
    command -v "$program" >/dev/null 2>&1 || [ -x "/usr/sbin/$program" ] || [ -x "/sbin/$program" ] \
      || missing+=("$package")
  fi
done < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$LIST")

if [ "$list_only" = 1 ]; then
  printf '%s\n' "${packages[@]}" | sort -u
  exit 0
fi
if [ ${#missing[@]} -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
