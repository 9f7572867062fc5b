#!/usr/bin/env bash
# The newcomer's first command: install dependencies, build, start cudele-mds on embedded
# defaults (local RocksDB + local object directory, no external service), mount it, show
# strong consistency across two mounts, then decouple a checkpoint directory, write files into
# it at local speed, merge, and show the status. Cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cargo build --release --bins

install -m755 target/release/cudele target/release/cudele-mds /usr/local/bin/
ln -sf /usr/local/bin/cudele /sbin/mount.fuse.cudele

work="${CUDELE_DEMO_DIR:-/tmp/cudele-demo}"
files="${CUDELE_DEMO_FILES:-2000}"
for mountpoint in "$work/mnt-a" "$work/mnt-b"; do
  mountpoint -q "$mountpoint" 2>/dev/null && cudele umount "$mountpoint" || true
done
rm -rf "$work"
mkdir -p "$work/mnt-a" "$work/mnt-b"

# The shared secret every client presents: a token file only its owner may read.
(umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/token")
cudele-mds --listen 127.0.0.1:0 --data-dir "$work/mds" --token-file "$work/token" >"$work/mds.out" 2>"$work/mds.log" &
mds_pid=$!
cleanup() {
  for mountpoint in "$work/mnt-a" "$work/mnt-b"; do
    mountpoint -q "$mountpoint" 2>/dev/null && cudele umount "$mountpoint" || true
  done
  kill "$mds_pid" 2>/dev/null || true
  wait "$mds_pid" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 1 100); do [ -s "$work/mds/mds.addr" ] && break; sleep 0.1; done
server="$(cat "$work/mds/mds.addr")"
echo "== cudele-mds is serving on $server (data: $work/mds)"

mount -t fuse.cudele "$server" "$work/mnt-a" -o token="$work/token"   # through mount(8) and the helper
cudele mount "$server" "$work/mnt-b" -o token="$work/token"            # through the CLI
echo "== two mounts: $work/mnt-a and $work/mnt-b"

mkdir "$work/mnt-a/projects"
echo "hello from mount A" > "$work/mnt-a/projects/greeting.txt"
echo "== mount B sees A's file at once:"
cat "$work/mnt-b/projects/greeting.txt"
ls -l "$work/mnt-b/projects"

echo "== decouple a checkpoint directory with examples/policies/checkpoint.yml (weak/global, block)"
mkdir "$work/mnt-a/checkpoint"
cudele decouple "$work/mnt-a/checkpoint" --policy examples/policies/checkpoint.yml
start=$(date +%s%N)
for i in $(seq 1 "$files"); do : > "$work/mnt-a/checkpoint/rank-$i.ckpt"; done
end=$(date +%s%N)
echo "== created $files files in the decoupled directory in $(( (end - start) / 1000000 )) ms"
cudele status "$work/mnt-a/checkpoint"
echo "== mount B is kept out while it is decoupled (interfere_policy: block):"
ls "$work/mnt-b/checkpoint" 2>&1 | head -1 || true
cudele merge "$work/mnt-a/checkpoint"
cudele recouple "$work/mnt-a/checkpoint"
echo "== after merge and recouple, mount B sees $(ls "$work/mnt-b/checkpoint" | wc -l) files"
cudele status --server "$server" --token-file "$work/token"
