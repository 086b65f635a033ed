#!/usr/bin/env bash
# One VM from `envup up` to provisioned, against the raw baseline measured
# in the same run: qemu-system-x86_64 started by hand with the same command
# line (same disk overlay, kernel, initrd, seed) until the first SSH command
# returns. Also two VMs with --jobs 2, and the bytes written to make the
# second VM's disk. Under TCG where KVM guests cannot boot. Prints figures.
# Targets: one VM <= 1.1x the baseline; two <= 1.3x one.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "qemu_up bench skipped: box builds need root"; exit 0; }
cargo build --release --locked -q
bin="$PWD/target/release/envup"
work=$(mktemp -d /var/tmp/envup-qbench-XXXX)
export ENVUP_HOME="$work/home"
ROUNDS=${ROUNDS:-3}
cleanup() {
  for d in "$work"/p*; do [ -f "$d/Envfile" ] && (cd "$d" && "$bin" -q destroy -f >/dev/null 2>&1 || true); done
  [ -f "$work/raw/qemu.pid" ] && kill "$(cat "$work/raw/qemu.pid")" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
"$bin" -q box build tiny -o "$work/tiny.box"
now() { date +%s.%N; }
# A project's state directory (envup keeps it under ENVUP_HOME).
state_of() { (cd "$1" && "$bin" status --json) | python3 -c "import json,sys; print(json.load(sys.stdin)['state'])"; }
median() { python3 -c "import sys, statistics; print(statistics.median(float(x) for x in sys.argv[1:]))" "$@"; }
ms() { python3 -c "import sys; print(f'{float(sys.argv[1])*1000:7.0f} ms')" "$1"; }
envfile() { # $1: number of machines
  echo '[defaults]'; echo 'box = "tiny"'; echo 'backend = "qemu"'; echo 'memory = "256MiB"'
  echo 'provision = [{ shell = "true", run = "always" }]'
  for i in $(seq 1 "$1"); do echo "[machines.m$i]"; done
}
up() { mkdir -p "$work/p$1"; envfile "$2" > "$work/p$1/Envfile"; cd "$work/p$1"; t0=$(now); "$bin" -q up --jobs 2; t1=$(now); cd - >/dev/null; python3 -c "print($t1-$t0)"; }
down() { (cd "$work/p$1" && "$bin" -q destroy -f >/dev/null); }

# A machine to borrow the exact qemu command line (from the running qemu:
# envup makes it at every start and keeps none), seed and key from.
up ref 1 >/dev/null
m="$(state_of "$work/pref")/machines/m1"
mkdir -p "$work/raw"
cp "$m/qemu/seed.img" "$m/id_ed25519" "$work/raw/"
pid=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['id'].split(':')[0])" "$m/state.json")
python3 - "/proc/$pid/cmdline" "$m" "$work/raw" > "$work/raw/args" <<'PY'
import sys
args = open(sys.argv[1], "rb").read().split(b"\0")[1:-1]
old, new = sys.argv[2].encode(), sys.argv[3].encode()
out, skip = [], 0
for i, a in enumerate(args):
    if skip:
        skip -= 1
        continue
    # The project network's tap is the machine's own: left out.
    if a in (b"-netdev", b"-device") and i + 1 < len(args) and b"net1" in args[i + 1]:
        skip = 1
        continue
    out.append(a.replace(old + b"/qemu", new).replace(old, new).decode())
print("\n".join(out))
PY
port=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['ssh']['port'])" "$m/state.json")
base=$(qemu-img info -U --output=json "$m/qemu/disk.qcow2" | python3 -c "import json,sys; print(json.load(sys.stdin)['backing-filename'])")
down ref
raw_once() {
  rm -f "$work/raw/disk.qcow2" "$work/raw/qemu.pid"
  local t0 t1
  t0=$(now)
  qemu-img create -q -f qcow2 -F qcow2 -b "$base" "$work/raw/disk.qcow2"
  mapfile -t args < "$work/raw/args"
  qemu-system-x86_64 "${args[@]}"
  until ssh -q -i "$work/raw/id_ed25519" -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -p "$port" root@127.0.0.1 true 2>/dev/null; do sleep 0.05; done
  t1=$(now)
  kill "$(cat "$work/raw/qemu.pid")"; sleep 0.5
  python3 -c "print($t1-$t0)"
}
raws=(); ones=(); twos=()
for r in $(seq 1 "$ROUNDS"); do
  raws+=("$(raw_once)")
  ones+=("$(up 1 1)"); down 1
  twos+=("$(up 2 2)")
  [ "$r" = "$ROUNDS" ] || down 2
done
echo "runs (s): raw ${raws[*]}; one ${ones[*]}; two ${twos[*]}" >&2
raw=$(median "${raws[@]}"); one=$(median "${ones[@]}"); two=$(median "${twos[@]}")
fresh="$work/fresh.qcow2"
qemu-img create -q -f qcow2 -F qcow2 -b "$base" "$fresh"
accel=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['accel'])" "$(state_of "$work/p2")/machines/m2/qemu/vm.json")
echo "one VM, up to provisioned (tiny, $accel), median of $ROUNDS:"
echo "  raw: qemu-system-x86_64, same command line, first SSH command $(ms "$raw")"
echo "  envup up                                                      $(ms "$one")   ratio $(python3 -c "print(f'{$one/$raw:.2f}x')")   target <= 1.1x"
echo "  envup up, two VMs, --jobs 2                                   $(ms "$two")   $(python3 -c "print(f'{$two/$one:.2f}x')") one   target <= 1.3x"
echo "  second VM's disk: overlay written at create $(du -B1 "$fresh" | cut -f1) bytes (the box image it backs onto: $(stat -c %s "$base") bytes, not copied)"
