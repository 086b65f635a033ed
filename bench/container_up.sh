#!/usr/bin/env bash
# One container machine from `envup up` to provisioned, against the raw
# baseline measured in the same run: `docker run` (or `podman run`) of the
# same image with its SSH server, keys bind-mounted, until the first SSH
# command returns. For each engine that works here. And what joining the
# project network costs: the same up with `[project] network = "none"`,
# interleaved; the network's cost is the median of each round's
# difference. ENGINES=docker (or podman) measures one. Prints figures.
# Targets: envup <= 1.3x the baseline; the network adds <= 30 ms.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "container_up bench skipped: needs root"; exit 0; }
cargo build --release --locked -q
bin="$PWD/target/release/envup"
work=$(mktemp -d /var/tmp/envup-cbench-XXXX)
export ENVUP_HOME="$work/home"
ROUNDS=${ROUNDS:-5}
cleanup() {
  for d in "$work"/p-*; do [ -f "$d/Envfile" ] && (cd "$d" && "$bin" -q destroy -f >/dev/null 2>&1 || true); done
  for e in docker podman; do command -v $e >/dev/null && $e rm -f envup-bench-raw >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT
"$bin" -q box build tiny -o "$work/tiny.box"
digest=$("$bin" --json box list | python3 -c "import json,sys; print([b['sha256'] for b in json.load(sys.stdin) if b['name']=='tiny'][0])")
image="localhost/envup-box:$digest"
ssh-keygen -q -t ed25519 -N "" -f "$work/hk"; ssh-keygen -q -t ed25519 -N "" -f "$work/ck"
now() { date +%s.%N; }
median() { python3 -c "import sys, statistics; print(statistics.median(float(x) for x in sys.argv[1:]))" "$@"; }
# The median of each round's difference a - b (two space-separated lists):
# the rounds are interleaved, so this cancels what drifts between rounds.
pdiff() { python3 -c "import sys, statistics; a, b = ([float(x) for x in s.split()] for s in sys.argv[1:]); print(statistics.median(x - y for x, y in zip(a, b)))" "$1" "$2"; }
ms() { python3 -c "import sys; print(f'{float(sys.argv[1])*1000:7.0f} ms')" "$1"; }

for engine in ${ENGINES:-docker podman}; do
  if ! "$engine" version >/dev/null 2>&1; then echo "$engine: not working here, skipped"; continue; fi
  mkdir -p "$work/p-$engine"
  printf '[machines.m]\nbox = "tiny"\nbackend = "container"\ncontainer = { engine = "%s" }\nprovision = [{ shell = "true", run = "always" }]\n' "$engine" > "$work/p-$engine/Envfile"
  mkdir -p "$work/p-$engine-none"
  { printf '[project]\nnetwork = "none"\n'; cat "$work/p-$engine/Envfile"; } > "$work/p-$engine-none/Envfile"
  # First up imports the image and finds the engine's host arguments.
  (cd "$work/p-$engine" && "$bin" -q up && "$bin" -q destroy -f)
  extra=()
  [ -f "$ENVUP_HOME/engines/$engine.json" ] && mapfile -t extra < <(python3 -c "import json,sys; print('\n'.join(json.load(open(sys.argv[1]))['args']))" "$ENVUP_HOME/engines/$engine.json")
  raws=(); ups=(); nones=(); restarts=(); restarts_none=()
  for r in $(seq 1 "$ROUNDS"); do
    port=$((20000 + RANDOM % 20000))
    t0=$(now)
    "$engine" run -d --name envup-bench-raw -p "127.0.0.1:$port:22" "${extra[@]}" \
      -v "$work/hk:/etc/ssh/ssh_host_ed25519_key:ro" -v "$work/ck.pub:/root/.ssh/authorized_keys:ro" "$image" >/dev/null
    until ssh -q -i "$work/ck" -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -p "$port" root@127.0.0.1 true 2>/dev/null; do sleep 0.01; done
    t1=$(now)
    raws+=("$(python3 -c "print($t1-$t0)")")
    "$engine" rm -f envup-bench-raw >/dev/null 2>&1
    cd "$work/p-$engine"; t0=$(now); "$bin" -q up; t1=$(now)
    ups+=("$(python3 -c "print($t1-$t0)")")
    # Started again: the network exists, the machine joins it.
    "$bin" -q halt; t0=$(now); "$bin" -q up; t1=$(now); "$bin" -q destroy -f; cd - >/dev/null
    restarts+=("$(python3 -c "print($t1-$t0)")")
    cd "$work/p-$engine-none"; t0=$(now); "$bin" -q up; t1=$(now)
    nones+=("$(python3 -c "print($t1-$t0)")")
    "$bin" -q halt; t0=$(now); "$bin" -q up; t1=$(now); "$bin" -q destroy -f; cd - >/dev/null
    restarts_none+=("$(python3 -c "print($t1-$t0)")")
  done
  raw=$(median "${raws[@]}"); up=$(median "${ups[@]}"); none=$(median "${nones[@]}")
  re=$(median "${restarts[@]}"); re_none=$(median "${restarts_none[@]}")
  echo "runs (s): raw ${raws[*]}; up ${ups[*]}; no network ${nones[*]}; again ${restarts[*]}; again, no network ${restarts_none[*]}" >&2
  echo "$engine, one machine up to provisioned (tiny), median of $ROUNDS:"
  echo "  raw: $engine run + first SSH command   $(ms "$raw")"
  echo "  envup up                             $(ms "$up")   ratio $(python3 -c "print(f'{$up/$raw:.2f}x')")   target <= 1.3x"
  echo "  envup up, no project network         $(ms "$none")   the network adds $(ms "$(pdiff "${ups[*]}" "${nones[*]}")") (made with the project; median of the rounds' differences)"
  echo "  up of the halted machine             $(ms "$re")   no network $(ms "$re_none")   the join adds $(ms "$(pdiff "${restarts[*]}" "${restarts_none[*]}")")   target <= 30 ms"
done
