#!/usr/bin/env bash
# One jail from `envup up` to provisioned, against the raw baseline measured
# in the same run: unshare + chroot of the same rootfs + its SSH server,
# until the first SSH command returns. Also four jails with --jobs 4, and
# fifty jails, and the supervisor's resident memory. And what the project
# network costs: one jail, and twenty with --jobs 4, with the network and
# with `[project] network = "none"`, interleaved. Prints figures; needs root.
# Targets: one jail <= 1.5x the baseline; four <= 2x one; supervisor <= 5 MB;
# the network adds <= 30 ms to one jail's up; twenty jails on one network
# come up in about the time twenty without one do.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "jail_up bench skipped: needs root"; exit 0; }
command -v slirp4netns >/dev/null || scripts/install-deps
cargo build --release --locked -q
bin="$PWD/target/release/envup"
work=$(mktemp -d /var/tmp/envup-bench-XXXX)
export ENVUP_HOME="$work/home"
cleanup() {
  for d in "$work"/p*; do [ -f "$d/Envfile" ] && (cd "$d" && "$bin" -q destroy -f >/dev/null 2>&1 || true); done
  umount -l "$work/raw/dev" 2>/dev/null || true
  pkill -f "dropbear -F -E -s -p $RAWPORT" 2>/dev/null || true
  rm -rf "$work"
}
RAWPORT=$((20000 + RANDOM % 20000))
trap cleanup EXIT
"$bin" -q box build tiny -o "$work/tiny.box"
digest=$(sha256sum "$work/tiny.box" | cut -d' ' -f1)
ms() { python3 -c "import sys; print(f'{float(sys.argv[1])*1000:7.0f} ms')" "$1"; }
now() { date +%s.%N; }
# A project's state directory (envup keeps it under ENVUP_HOME).
state_of() { (cd "$1" && "$bin" status --json) | python3 -c "import json,sys; print(json.load(sys.stdin)['state'])"; }

# Baseline: the same rootfs, unshare + chroot, tiny's start-up, dropbear.
mkdir -p "$work/raw"
tar -xf "$ENVUP_HOME/boxes-v1/$digest/rootfs.tar" -C "$work/raw"
ssh-keygen -q -t ed25519 -N "" -f "$work/hk"; ssh-keygen -q -t ed25519 -N "" -f "$work/ck"
cp "$work/hk" "$work/raw/etc/ssh/ssh_host_ed25519_key"; cp "$work/ck.pub" "$work/raw/root/.ssh/authorized_keys"
mount --bind /dev "$work/raw/dev"
raw_once() {
  local t0 t1 pid
  t0=$(now)
  unshare --mount --pid --uts --fork --kill-child --mount-proc="$work/raw/proc" chroot "$work/raw" /bin/sh -c \
    "/etc/init.d/rcS; exec /usr/sbin/dropbear -F -E -s -p $RAWPORT -r /etc/dropbear/dropbear_ed25519_host_key" >/dev/null 2>&1 &
  pid=$!
  until ssh -q -i "$work/ck" -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -p $RAWPORT root@127.0.0.1 true 2>/dev/null; do sleep 0.01; done
  t1=$(now)
  # unshare ignores SIGTERM while it waits; its child dies with it.
  kill -KILL "$pid"; wait "$pid" 2>/dev/null || true
  python3 -c "print($t1-$t0)"
}
median() { python3 -c "import sys, statistics; print(statistics.median(float(x) for x in sys.argv[1:]))" "$@"; }
ROUNDS=${ROUNDS:-5}

envfile() { # $1: number of machines; $2: `none` for no project network
  [ "${2:-}" = none ] && { echo '[project]'; echo 'network = "none"'; }
  echo '[defaults]'; echo 'box = "tiny"'; echo 'backend = "jail"'; echo 'memory = "128MiB"'
  echo 'provision = [{ shell = "true", run = "always" }]'
  for i in $(seq 1 "$1"); do echo "[machines.m$i]"; done
}
one() { mkdir -p "$work/p$1"; envfile "$2" "${3:-}" > "$work/p$1/Envfile"; cd "$work/p$1"; t0=$(now); "$bin" -q up --jobs 4; t1=$(now); cd - >/dev/null; python3 -c "print($t1-$t0)"; }
down() { (cd "$work/p$1" && "$bin" -q destroy -f >/dev/null); }
# The box's rootfs is unpacked into the store on first use; do that first.
one warm 1 >/dev/null
# Each figure is the median of $ROUNDS runs, the three kinds interleaved.
raws=(); ones=(); fours=()
for r in $(seq 1 "$ROUNDS"); do
  raws+=("$(raw_once)")
  ones+=("$(one 1 1)"); down 1
  fours+=("$(one 4 4)")
  [ "$r" = "$ROUNDS" ] || down 4
done
# Fifty jails at once (three runs): how start-up scales with many machines.
fifties=()
for r in 1 2 3; do fifties+=("$(one 50 50)"); down 50; done
# The project network: one jail up and halted again (the network stays, as
# in a project's life) and twenty jails, with and without it, interleaved.
for n in 1 20; do
  one "net$n" "$n" >/dev/null; (cd "$work/pnet$n" && "$bin" -q halt)
  one "none$n" "$n" none >/dev/null; (cd "$work/pnone$n" && "$bin" -q halt)
done
nets1=(); nones1=(); nets20=(); nones20=()
for r in $(seq 1 "$ROUNDS"); do
  for kind in net none; do
    for n in 1 20; do
      t=$(cd "$work/p$kind$n" && t0=$(now) && "$bin" -q up --jobs 4 && t1=$(now) && "$bin" -q halt && python3 -c "print($t1-$t0)")
      eval "${kind}s$n+=($t)"
    done
  done
done
# One jail made and destroyed, with and without: the network made and
# removed each time.
made_net=(); made_none=()
for r in $(seq 1 "$ROUNDS"); do
  made_net+=("$(one mnet 1)"); down mnet
  made_none+=("$(one mnone 1 none)"); down mnone
done
for d in net1 none1 net20 none20; do down "$d"; done
echo "runs (s): raw ${raws[*]}; one ${ones[*]}; four ${fours[*]}; fifty ${fifties[*]}" >&2
echo "runs (s): network one ${nets1[*]}; none one ${nones1[*]}; network twenty ${nets20[*]}; none twenty ${nones20[*]}; made network ${made_net[*]}; made none ${made_none[*]}" >&2
t_fifty=$(median "${fifties[@]}")
raw=$(median "${raws[@]}"); t_one=$(median "${ones[@]}"); t_four=$(median "${fours[@]}")
sup=$(cut -d' ' -f1 "$(state_of "$work/p4")/machines/m1/jail/supervisor.pid")
rss=$(awk '/VmRSS/ {print $2}' "/proc/$sup/status")

echo "one jail, up to provisioned (tiny), median of $ROUNDS:"
echo "  raw: unshare + chroot + dropbear, first SSH command $(ms "$raw")"
echo "  envup up                                           $(ms "$t_one")   ratio $(python3 -c "print(f'{$t_one/$raw:.2f}x')")   target <= 1.5x"
echo "  envup up, four jails, --jobs 4                     $(ms "$t_four")   $(python3 -c "print(f'{$t_four/$t_one:.2f}x')") one   target <= 2x"
echo "  envup up, fifty jails, --jobs 4                    $(ms "$t_fifty")   $(python3 -c "print(f'{$t_fifty/$t_one:.1f}x')") one"
echo "  supervisor resident memory                         $((rss / 1024)) MB ($rss kB)   target <= 5 MB"
n1=$(median "${nets1[@]}"); o1=$(median "${nones1[@]}"); n20=$(median "${nets20[@]}"); o20=$(median "${nones20[@]}")
mn=$(median "${made_net[@]}"); mo=$(median "${made_none[@]}")
echo "the project network, median of $ROUNDS (up of halted jails; made: up of a new project):"
echo "  one jail, up    no network $(ms "$o1")   network $(ms "$n1")   adds $(ms "$(python3 -c "print($n1-$o1)")")   target <= 30 ms"
echo "  one jail, made  no network $(ms "$mo")   network $(ms "$mn")   adds $(ms "$(python3 -c "print($mn-$mo)")")"
echo "  twenty jails    no network $(ms "$o20")   network $(ms "$n20")   ratio $(python3 -c "print(f'{$n20/$o20:.2f}x')")"
