#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for CI and for trying the SLURM profile:
# Debian's slurm-wlm + munge, slurmctld and slurmd on this host, no accounting database.
#
#   bash scripts/slurm-local.sh install   # apt-get install slurm-wlm munge (root)
#   bash scripts/slurm-local.sh start     # write the config, start munged, slurmctld, slurmd; wait for the node
#   bash scripts/slurm-local.sh stop      # stop the daemons this script started
#
# Jobs are then submitted by Snakemake's SLURM executor with `--slurm-status-command squeue`
# (there is no sacct without accounting storage); see tests/workflow/test_slurm_cluster.py.
set -euo pipefail
STATE=${VLMSWAP_SLURM_STATE:-/tmp/vlmswap-slurm}
HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 2048 ))

install() {
  if command -v slurmctld >/dev/null && command -v munged >/dev/null; then
    echo "slurm-local: slurm-wlm and munge are installed"
    return
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq slurm-wlm munge >/dev/null
  echo "slurm-local: installed slurm-wlm and munge"
}

start() {
  mkdir -p "$STATE"/{spool/slurmd,spool/slurmctld,log} /etc/slurm /run/munge /var/log/munge /var/lib/munge
  chown -R munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
    chown munge:munge /etc/munge/munge.key 2>/dev/null || true
    chmod 400 /etc/munge/munge.key
  fi
  pgrep -x munged >/dev/null || su -s /bin/sh munge -c /usr/sbin/munged 2>/dev/null || /usr/sbin/munged --force
  cat > /etc/slurm/slurm.conf <<EOF
# written by vlmswap scripts/slurm-local.sh: a single-node cluster on $HOST
ClusterName=vlmswap-local
SlurmctldHost=$HOST
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$STATE/spool/slurmctld
SlurmdSpoolDir=$STATE/spool/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# finished jobs stay visible to squeue long enough for the executor's status checks
MinJobAge=3600
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld
  pgrep -x slurmd >/dev/null || /usr/sbin/slurmd
  for _ in $(seq 60); do
    if sinfo -h -N -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
      echo "slurm-local: node $HOST up ($CPUS CPUs, $MEM_MB MB)"
      return
    fi
    scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
    sleep 1
  done
  echo "slurm-local: the node did not come up; logs in $STATE/log" >&2
  tail -n 20 "$STATE"/log/*.log >&2 || true
  exit 1
}

stop() {
  pkill -x slurmd 2>/dev/null || true
  pkill -x slurmctld 2>/dev/null || true
  echo "slurm-local: stopped slurmctld and slurmd"
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 install|start|stop" >&2; exit 2 ;;
esac
