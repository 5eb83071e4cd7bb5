#!/usr/bin/env bash
# A one-node Slurm cluster on localhost for the test suite (slurmctld + slurmd + munge), from Debian's packages.
#
#   scripts/slurm-test-cluster.sh start   # install if needed (root + apt), configure, start, wait until the node is idle
#   scripts/slurm-test-cluster.sh stop
#   scripts/slurm-test-cluster.sh status
#
# Idempotent: running `start` again with the cluster up does nothing. It writes /etc/slurm/slurm.conf only if that
# file is absent or was written by this script (it carries a marker line), so a real cluster's config is never
# touched. Exits non-zero with a loud message when the cluster cannot be brought up.
set -euo pipefail

MARKER="# written by ideator scripts/slurm-test-cluster.sh"
CONF=/etc/slurm/slurm.conf
LOG_DIR=/var/log/slurm
CPUS=${IDEATOR_SLURM_CPUS:-8}

say() { echo "slurm-test-cluster: $*" >&2; }
die() {
  say "ERROR: $*"
  for f in "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log"; do
    [ -f "$f" ] && { say "last lines of $f:"; tail -n 20 "$f" >&2; }
  done
  exit 1
}

installed() { command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && command -v sbatch >/dev/null; }

install() {
  installed && return 0
  [ "$(id -u)" = 0 ] || die "slurm-wlm and munge are not installed and this is not root: apt-get install slurm-wlm munge"
  command -v apt-get >/dev/null || die "slurm-wlm and munge are not installed and there is no apt-get"
  say "installing slurm-wlm and munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || die "apt-get update failed"
  apt-get install -y -qq slurm-wlm munge >/dev/null || die "apt-get install slurm-wlm munge failed"
  installed || die "slurm-wlm installed but its commands are missing"
}

up() { scontrol ping 2>/dev/null | grep -q UP && sinfo -h -N -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; }

configure() {
  mkdir -p /etc/slurm "$LOG_DIR" /var/spool/slurmctld /var/spool/slurmd /run/munge
  if [ -f "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
    die "$CONF exists and was not written by this script; not touching a real cluster's config"
  fi
  local mem
  mem=$(awk '/MemTotal/ {print int($2 / 1024 / 2)}' /proc/meminfo)
  cat >"$CONF" <<EOF
$MARKER
ClusterName=ideator-test
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# The test node claims $CPUS CPUs whatever the machine has, so that several short jobs run side by side.
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=600
SchedulerParameters=sched_interval=1
MessageTimeout=20
NodeName=localhost NodeHostname=localhost CPUs=$CPUS RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
  # Debian's package makes the munge key; make one if it is missing.
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
  fi
  chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
  chmod 700 /etc/munge
  chmod 400 /etc/munge/munge.key
}

start() {
  install
  if up; then say "already up"; return 0; fi
  configure
  if ! pgrep -x munged >/dev/null; then
    if id munge >/dev/null 2>&1; then
      runuser -u munge -- /usr/sbin/munged || die "munged did not start"
    else
      /usr/sbin/munged --force || die "munged did not start"
    fi
  fi
  munge -n </dev/null | unmunge >/dev/null || die "munge does not work"
  pgrep -x slurmctld >/dev/null || slurmctld -c || die "slurmctld did not start"
  pgrep -x slurmd >/dev/null || slurmd -N localhost || die "slurmd did not start"
  for _ in $(seq 1 60); do
    if up; then
      # A node left DOWN by an earlier run comes back.
      scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true
      say "up: $(sinfo -h -o '%P %D %T %c')"
      return 0
    fi
    sleep 1
  done
  die "the cluster did not come up within 60 s ($(sinfo -h 2>&1 | head -n 3))"
}

stop() {
  local f
  for f in /run/slurmd.pid /run/slurmctld.pid; do
    [ -s "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
  done
  say "stopped slurmd and slurmctld (munged keeps running)"
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) if up; then say "up"; sinfo; else say "down"; exit 1; fi ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
