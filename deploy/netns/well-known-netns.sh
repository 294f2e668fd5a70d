#!/bin/sh
# Gives a network namespace the clouds' well-known metadata addresses on its loopback, for
# `credsidecar serve --well-known` (deploy/netns/README.md). No iptables, nothing on the host.
#
#   well-known-netns.sh add NAME     create `ip netns` NAME (if missing) and set it up
#   well-known-netns.sh setup FILE   set up an existing namespace, e.g. /proc/PID/ns/net of a
#                                    container's process, or /run/netns/NAME
#   well-known-netns.sh del NAME     remove `ip netns` NAME and /etc/netns/NAME
#
# Needs root (CAP_NET_ADMIN, and CAP_SYS_ADMIN to enter a namespace). Sets, in the namespace
# only: lo up; 169.254.169.254/32 and 169.254.170.2/32 on lo; fd00:ec2::254/128 where IPv6 is
# on; net.ipv4.ip_unprivileged_port_start=80 so the sidecar binds port 80 with no capability.
# For `ip netns` names also /etc/netns/NAME/hosts, which `ip netns exec` shows as /etc/hosts:
# metadata.google.internal -> 169.254.169.254.
set -eu

usage() {
  echo "usage: $0 add NAME | setup NSFILE | del NAME" >&2
  exit 2
}

in_ns() {  # in_ns NSFILE COMMAND...: a command inside the namespace
  ns=$1; shift
  nsenter --net="$ns" "$@"
}

setup() {
  ns=$1
  in_ns "$ns" ip link set lo up
  for address in 169.254.169.254/32 169.254.170.2/32; do
    # Idempotent: an address already there is left alone.
    in_ns "$ns" ip -4 addr show dev lo | grep -q " ${address%/*}/" \
      || in_ns "$ns" ip addr add "$address" dev lo
  done
  if in_ns "$ns" ip -6 addr show dev lo | grep -q " fd00:ec2::254/"; then
    :
  elif ! in_ns "$ns" ip -6 addr add fd00:ec2::254/128 dev lo 2>/dev/null; then
    echo "$0: IPv6 is off in this namespace: fd00:ec2::254 skipped" >&2
  fi
  in_ns "$ns" sysctl -q -w net.ipv4.ip_unprivileged_port_start=80
}

[ $# -eq 2 ] || usage
case $1 in
  add)
    name=$2
    [ -e "/run/netns/$name" ] || ip netns add "$name"
    setup "/run/netns/$name"
    mkdir -p "/etc/netns/$name"
    printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n169.254.169.254 metadata.google.internal\n' \
      >"/etc/netns/$name/hosts"
    ;;
  setup)
    [ -e "$2" ] || { echo "$0: no namespace file $2" >&2; exit 1; }
    setup "$2"
    ;;
  del)
    name=$2
    ip netns del "$name" 2>/dev/null || true
    rm -rf "/etc/netns/$name"
    ;;
  *)
    usage
    ;;
esac
