#!/usr/bin/env bash
# A soak: one project of MACHINES machines (three jails to each Docker
# container, on the project network) churned through up, exec, halt, up
# and destroy for MINUTES minutes. Prints each cycle's times and what the
# host holds after it (processes, open files, mounts, network namespaces,
# envup's cgroups, links, firewall rules, network and id claims), then the
# growth from the first cycle to the last. The baseline is the first
# cycle of the same run; the target is flat: no count grows, and the last
# cycles take about as long as the first. Needs root.
#   MINUTES=30 MACHINES=100 bench/soak.sh      (the defaults)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "soak skipped: needs root"; exit 0; }
command -v slirp4netns >/dev/null || scripts/install-deps
cargo build --release --locked -q
bin="$PWD/target/release/envup"
MINUTES=${MINUTES:-30}
MACHINES=${MACHINES:-100}
JOBS=${JOBS:-4}
work=$(mktemp -d /var/tmp/envup-soak-XXXX)
export ENVUP_HOME="$work/home"
cleanup() { (cd "$work/p" 2>/dev/null && "$bin" -q destroy -f >/dev/null 2>&1) || true; rm -rf "$work"; }
trap cleanup EXIT
"$bin" -q box build tiny -o "$work/tiny.box"

docker=0
docker info >/dev/null 2>&1 && docker=1
mkdir -p "$work/p"
{
  echo '[defaults]'; echo 'box = "tiny"'; echo 'memory = "128MiB"'
  echo 'provision = [{ shell = "echo up >> /root/ups", run = "always" }]'
  for i in $(seq 1 "$MACHINES"); do
    echo "[machines.m$i]"
    if [ "$docker" = 1 ] && [ $((i % 4)) = 0 ]; then
      echo 'backend = "container"'; echo '[machines.m'"$i"'.container]'; echo 'engine = "docker"'
    else
      echo 'backend = "jail"'
    fi
  done
} > "$work/p/Envfile"
[ "$docker" = 1 ] || echo "note: Docker does not answer here; jails only" >&2

now() { date +%s.%N; }
timed() { local t0 t1; t0=$(now); "$@" >/dev/null; t1=$(now); python3 -c "print(f'{$t1-$t0:.2f}')"; }
# What the host holds, as name=count pairs.
counts() {
  local procs fds mounts netns cgroups links rules nets ids
  procs=$(ls -d /proc/[0-9]* 2>/dev/null | wc -l)
  fds=$(cut -f1 /proc/sys/fs/file-nr)
  mounts=$(wc -l < /proc/self/mountinfo)
  netns=$(ls /run/netns 2>/dev/null | wc -l)
  cgroups=$(find /sys/fs/cgroup -maxdepth 3 -type d -name 'envup-*' 2>/dev/null | wc -l)
  links=$(ls /sys/class/net | wc -l)
  rules=$(iptables -w -S 2>/dev/null | wc -l)
  nets=$(ls /var/lib/envup/networks 2>/dev/null | grep -c _ || true)
  ids=$(ls /var/lib/envup/ids 2>/dev/null | grep -vc '^\.' || true)
  echo "procs=$procs fds=$fds mounts=$mounts netns=$netns cgroups=$cgroups links=$links rules=$rules net_claims=$nets id_claims=$ids"
}

cd "$work/p"
echo "soak: $MACHINES machines ($([ "$docker" = 1 ] && echo "1 in 4 a Docker container" || echo "jails")), $MINUTES min, --jobs $JOBS"
echo "before: $(counts)"
deadline=$(( $(date +%s) + MINUTES * 60 ))
cycle=0
first="" last=""
times=()
while [ "$(date +%s)" -lt "$deadline" ]; do
  cycle=$((cycle + 1))
  t_up=$(timed "$bin" -q up --jobs "$JOBS")
  m="m$(( (RANDOM % MACHINES) + 1 ))"
  t_exec=$(timed "$bin" -q exec "$m" -- true)
  t_halt=$(timed "$bin" -q halt)
  t_again=$(timed "$bin" -q up --jobs "$JOBS")
  t_destroy=$(timed "$bin" -q destroy -f)
  c=$(counts)
  [ -n "$first" ] || first=$c
  last=$c
  times+=("$t_up")
  echo "cycle $cycle: up ${t_up}s exec ${t_exec}s halt ${t_halt}s up-again ${t_again}s destroy ${t_destroy}s | $c"
done
echo "after: $last"
python3 - "$first" "$last" "${times[@]}" <<'PY'
import sys, statistics
first = dict(kv.split("=") for kv in sys.argv[1].split())
last = dict(kv.split("=") for kv in sys.argv[2].split())
grew = {k: int(last[k]) - int(first[k]) for k in first if int(last[k]) != int(first[k])}
ups = [float(t) for t in sys.argv[3:]]
print(f"growth from the first cycle to the last: {grew if grew else 'none'}")
if len(ups) >= 6:
    a, b = statistics.mean(ups[:3]), statistics.mean(ups[-3:])
    print(f"up of all machines: first three cycles {a:.2f}s, last three {b:.2f}s ({b / a:.2f}x)")
PY
