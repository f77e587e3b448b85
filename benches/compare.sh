#!/usr/bin/env bash
# benches/compare.sh: run the same workloads on a plain directory, kernel
# overlayfs, fuse-overlayfs, unionfs-fuse and unionfs-mount (over /dev/fuse:
# "unionfs"; over FUSE over io_uring: "unionfs-uring"), in one run, over
# tmpfs-backed branches with 5 lower layers, and print a markdown table of
# medians with each filesystem's ratio to kernel overlayfs. Results are
# checked (a fast wrong answer is marked WRONG). Everything is unmounted at
# the end, also when interrupted. Run as root.
#
#   benches/compare.sh              the full sizes of issue #7
#   SCALE=10 benches/compare.sh     every count and size divided by 10 (a quick look)
#   RUNS=5 benches/compare.sh       repetitions of each workload (default 3; 1 for
#                                   rand-read and tar-x; LOOKUP_RUNS=15 for lookups, mounts)
#   FS="overlay unionfs" ...        a subset of filesystems
#   WORKLOADS="stat-second du-tar"  a subset of workloads ("lookup" for lookups and mounts)
# unionfs-uring turns the kernel's FUSE over io_uring on for the run
# (/sys/module/fuse/parameters/enable_uring) and back as it was after. The
# run ends with the round trip of one request on each of our transports.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
SCALE=${SCALE:-1}
RUNS=${RUNS:-3}
# first lookups and mounts take a few ms each and vary most: more runs
LOOKUP_RUNS=${LOOKUP_RUNS:-15}
FS=${FS:-"plain overlay fuse-overlayfs unionfs-fuse unionfs unionfs-uring"}
W=${BENCH_DIR:-/tmp/unionfs-bench}
n() { echo $(( $1 / SCALE > 0 ? $1 / SCALE : 1 )); }

need=()
command -v fuse-overlayfs >/dev/null || need+=(fuse-overlayfs)
command -v unionfs-fuse >/dev/null || need+=(unionfs-fuse)
command -v fio >/dev/null || need+=(fio)
command -v mount.fuse3 >/dev/null || need+=(fuse3)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
(cd "$top" && cargo build --release --quiet --bin unionfs-mount) || exit 1
UM=$top/target/release/unionfs-mount
cc -O2 -o "$W.fsbench" "$here/src/fsbench.c" 2>/dev/null || { mkdir -p "$(dirname "$W")"; cc -O2 -o "$W.fsbench" "$here/src/fsbench.c"; }
FSB=$W.fsbench

knob=/sys/module/fuse/parameters/enable_uring
knob_before=$(cat "$knob" 2>/dev/null || echo none)
cleanup() {
    for m in $(awk -v w="$W" 'index($2, w) == 1 { print $2 }' /proc/mounts | sort -r); do
        umount -l "$m" 2>/dev/null
    done
    [ "$knob_before" = none ] || echo "$knob_before" > "$knob"
}
if [[ " $FS " == *" unionfs-uring "* ]]; then
    echo Y > "$knob" 2>/dev/null || { echo "unionfs-uring: this kernel cannot serve FUSE over io_uring ($knob)" >&2; exit 1; }
fi
trap 'cleanup; exit 130' INT TERM
trap cleanup EXIT
cleanup
mkdir -p "$W"
mountpoint -q "$W" || mount -t tmpfs -o size=12g tmpfs "$W"
log=$W/log
: > "$log"

# --- the trees -------------------------------------------------------------
# Lower layers: five trees, each a fifth of the 50k-file stat tree, a fifth of
# the 20k-entry merged directory (the top layer whites out 1000 of the lower
# names), 2000 of the 10k small files, and (in the bottom one) a 1 GiB file.
# Whiteouts differ by format: .wh. files for unionfs, 0/0 char devices for the
# overlay family, none for unionfs-fuse (it has no lower-layer format).
make_lowers() {
    local fmt=$1 base=$W/lowers-$1 i j
    [ -d "$base" ] && return
    for i in 1 2 3 4 5; do
        local l=$base/l$i
        mkdir -p "$l/tree" "$l/big" "$l/small"
        for j in $(seq 1 $(n 100)); do mkdir -p "$l/tree/d$i-$j"; done
        (cd "$l/tree" && for j in $(seq 1 $(n 100)); do (cd "d$i-$j" && seq 1 $((100)) | sed "s/^/f/" | xargs touch); done)
        (cd "$l/big" && seq $(( (i - 1) * $(n 4000) + 1 )) $(( i * $(n 4000) )) | sed 's/^/e/' | xargs touch)
        (cd "$l/small" && seq 1 $(n 2000) | sed "s/^/s$i-/" | xargs -n 1000 sh -c 'for f; do head -c 4096 /dev/zero > "$f"; done' _)
    done
    # whiteouts for 1000 names of the lower layers, in the top layer
    local k=$(( $(n 1000) ))
    for j in $(seq $(( $(n 4000) + 1 )) $(( $(n 4000) + k ))); do
        case $fmt in
        wh) rm -f "$base/l1/big/e$j"; touch "$base/l1/big/.wh.e$j" ;;
        ovl) rm -f "$base/l1/big/e$j"; mknod "$base/l1/big/e$j" c 0 0 ;;
        none) ;;
        esac
    done
    [ -f "$W/file1g" ] || { head -c $(( 1024 * 1024 * 1024 / SCALE )) /dev/urandom > "$W/file1g"; md5sum < "$W/file1g" | cut -d' ' -f1 > "$W/file1g.md5"; }
    ln "$W/file1g" "$base/l5/file1g"
}

lowers_of() {
    case $1 in unionfs|unionfs-uring) echo wh ;; unionfs-fuse) echo none ;; *) echo ovl ;; esac
}

# mount_fs FS MNT [NLOWER]: a fresh, empty upper over the lowers (or over
# NLOWER layers of the deep stack when NLOWER is given with DEEP=1).
mount_fs() {
    local fs=$1 mnt=$2 fmt base up=$W/upper-$1 wk=$W/work-$1 lowers spec l
    fmt=$(lowers_of "$fs")
    base=$W/lowers-$fmt
    rm -rf "$up" "$wk"
    mkdir -p "$up" "$wk" "$mnt"
    local ls=()
    if [ -n "${DEEP:-}" ]; then
        for ((l = 1; l <= DEEP; l++)); do ls+=("$W/deep/l$l"); done
    else
        for l in 1 2 3 4 5; do ls+=("$base/l$l"); done
    fi
    lowers=$(IFS=:; echo "${ls[*]}")
    case $fs in
    plain)
        # the merged view, copied once: the baseline without any union
        if [ -z "${DEEP:-}" ]; then
            [ -d "$W/plain-$fmt" ] || { mkdir -p "$W/plain-$fmt"; for ((l = 5; l >= 1; l--)); do cp -a "$base/l$l/." "$W/plain-$fmt/"; done; find "$W/plain-$fmt" -name '.wh.*' -delete; find "$W/plain-$fmt" -type c -delete; }
            mount --bind "$W/plain-$fmt" "$mnt"
        else
            mount --bind "${ls[-1]}" "$mnt"
        fi ;;
    overlay) mount -t overlay overlay -o "lowerdir=$lowers,upperdir=$up,workdir=$wk" "$mnt" ;;
    fuse-overlayfs) fuse-overlayfs -o "lowerdir=$lowers,upperdir=$up,workdir=$wk" "$mnt" 2>>"$log" ;;
    unionfs-fuse)
        spec="$up=RW"; for l in "${ls[@]}"; do spec="$spec:$l=RO"; done
        unionfs-fuse -o cow,use_ino,allow_other "$spec" "$mnt" 2>>"$log" ;;
    unionfs|unionfs-uring)
        local ring=off
        [ "$fs" = unionfs-uring ] && ring=on
        spec="$up=rw"; for l in "${ls[@]}"; do spec="$spec:$l=ro"; done
        # default options (udba=notify: long kernel caching, direct changes followed)
        "$UM" -o "${UNIONFS_OPTS:+$UNIONFS_OPTS,}io_uring=$ring" "$spec" "$mnt" ;;
    esac
}

umount_fs() {
    umount "$1" 2>/dev/null || umount -l "$1"
}

daemon_pid() {
    local mnt=$1
    for p in /proc/[0-9]*; do
        tr '\0' ' ' < "$p/cmdline" 2>/dev/null | grep -q -- " $mnt" && { basename "$p"; return; }
    done
}

# cpu ticks (utime+stime) and peak RSS (kB) of a daemon
daemon_stats() {
    local pid=$1
    [ -n "$pid" ] || { echo "- -"; return; }
    local t
    t=$(awk '{ print $14 + $15 }' "/proc/$pid/stat" 2>/dev/null)
    echo "${t:--} $(awk '/VmHWM/ { print $2 }' "/proc/$pid/status" 2>/dev/null)"
}

median() { sort -n | awk '{ a[NR] = $1 } END { print (NR ? a[int((NR + 1) / 2)] : "-") }'; }

declare -A R   # R[workload,fs] = value
declare -A CPU RSS
units=()
order=()

record() { # workload fs value
    R[$1,$2]=$3
    if ! printf '%s\n' "${order[@]}" | grep -qx -- "$1"; then order+=("$1"); fi
}

# run_workload NAME UNIT FS... : the body is in the function wl_NAME FS MNT,
# which prints "value check" (check = "ok" or a reason).
wanted() { [ -z "${WORKLOADS:-}" ] || [[ " $WORKLOADS " == *" $1 "* ]]; }

run_workload() {
    local name=$1 unit=$2 fs mnt v vals pid before after
    wanted "$name" || return 0
    units+=("$name=$unit")
    for fs in $FS; do
        vals=()
        local runs=$RUNS
        case $name in rand-read|tar-x|du-tar) runs=1 ;; esac
        for ((r = 0; r < runs; r++)); do
            mnt=$W/mnt-$fs
            mount_fs "$fs" "$mnt" || { record "$name" "$fs" "mount failed"; continue 2; }
            pid=$(daemon_pid "$mnt")
            before=$(daemon_stats "$pid")
            out=$("wl_$name" "$fs" "$mnt" 2>>"$log")
            after=$(daemon_stats "$pid")
            umount_fs "$mnt"
            v=${out%% *}
            check=${out#* }
            if [ "$check" != ok ]; then
                echo "$name on $fs: WRONG ($check)" >> "$log"
                v="WRONG"
            fi
            vals+=("$v")
            if [ -n "$pid" ]; then
                CPU[$name,$fs]=$(( ${after% *} - ${before% *} ))
                RSS[$name,$fs]=${after#* }
            fi
        done
        if printf '%s\n' "${vals[@]}" | grep -q WRONG; then
            record "$name" "$fs" WRONG
        else
            record "$name" "$fs" "$(printf '%s\n' "${vals[@]}" | median)"
        fi
        echo "  $name $fs ${R[$name,$fs]} $unit" >&2
    done
}

ms() { awk '{ printf "%.1f", $1 }'; }

# --- workloads ---------------------------------------------------------------
N_TREE=$(( $(n 100) * 100 * 5 ))     # files of the stat tree
N_BIG=$(( $(n 4000) * 5 - $(n 1000) ))

list_tree() { # the stat tree's paths under MNT
    (cd "$W/plain-ovl" && find tree -type f) | sed "s#^#$1/#" > "$W/list-$2"
}

wl_stat-fresh() {
    list_tree "$2" "$1"
    set -- $("$FSB" stat "$W/list-$1")
    [ "$2" = "$N_TREE" ] && echo "$1 ok" || echo "$1 stat'ed $2 of $N_TREE"
}

wl_stat-second() {
    list_tree "$2" "$1"
    "$FSB" stat "$W/list-$1" > /dev/null
    set -- $("$FSB" stat "$W/list-$1")
    [ "$2" = "$N_TREE" ] && echo "$1 ok" || echo "$1 stat'ed $2 of $N_TREE"
}

wl_readdir() {
    set -- $("$FSB" readdir "$2/big") "$1"
    local want=$N_BIG
    [ "$3" = unionfs-fuse ] && want=$(( $(n 4000) * 5 ))  # no whiteouts there
    [ "$2" = "$want" ] && echo "$1 ok" || echo "$1 listed $2, expected $want"
}

wl_find() {
    local a b c
    a=$(date +%s%N)
    c=$(find "$2" | wc -l)
    b=$(date +%s%N)
    [ "$c" -gt "$N_TREE" ] && echo "$(( (b - a) / 1000000 )) ok" || echo "0 found $c"
}

wl_seq-read() {
    local a b sum
    a=$(date +%s%N)
    dd if="$2/file1g" of=/dev/null bs=1M 2>/dev/null
    b=$(date +%s%N)
    local mb=$(( 1024 / SCALE ))
    # checked after the clock stops: the checksum's own cost is not measured
    sum=$(md5sum < "$2/file1g" | cut -d' ' -f1)
    [ "$sum" = "$(cat "$W/file1g.md5")" ] || { echo "0 checksum"; return; }
    echo "$(awk -v mb=$mb -v ns=$((b - a)) 'BEGIN { printf "%.0f", mb / (ns / 1e9) }') ok"
}

wl_rand-read() {
    local iops
    iops=$(fio --name=rr --filename="$2/file1g" --rw=randread --bs=4k --ioengine=psync --runtime=$(( 10 / SCALE + 2 )) --time_based --readonly --output-format=terse 2>>"$log" | awk -F';' '{ print $8 }')
    [ -n "$iops" ] && echo "$iops ok" || echo "0 fio failed"
}

wl_seq-write() {
    local a b mb=$(( 1024 / SCALE ))
    a=$(date +%s%N)
    dd if=/dev/zero of="$2/newfile" bs=1M count=$mb conv=fsync 2>/dev/null
    b=$(date +%s%N)
    [ "$(stat -c %s "$2/newfile")" = $(( mb * 1048576 )) ] || { echo "0 size"; return; }
    echo "$(awk -v mb=$mb -v ns=$((b - a)) 'BEGIN { printf "%.0f", mb / (ns / 1e9) }') ok"
}

wl_copyup-1g() {
    local a b size=$(( 1024 * 1024 * 1024 / SCALE ))
    a=$(date +%s%N)
    echo x >> "$2/file1g"
    b=$(date +%s%N)
    [ "$(stat -c %s "$2/file1g")" = $(( size + 2 )) ] || { echo "0 size"; return; }
    # the plain baseline has no upper layer to throw away: undo the append
    [ "$1" = plain ] && truncate -s "$size" "$2/file1g"
    echo "$(( (b - a) / 1000000 )) ok"
}

wl_copyup-small() {
    (cd "$W/plain-ovl" && find small -type f) | sed "s#^#$2/#" > "$W/list-$1"
    set -- $("$FSB" chmod "$W/list-$1")
    [ "$2" = $(( $(n 2000) * 5 )) ] && echo "$1 ok" || echo "$1 chmod'ed $2"
}

wl_create() {
    # (the plain baseline keeps its directory between runs)
    rm -rf "$2/new"; mkdir -p "$2/new"
    local c
    c=$("$FSB" create "$2/new" $(n 20000) 4096)
    [ "${c#* }" = $(n 20000) ] && [ "$(ls -A "$2/new" | wc -l)" = $(n 20000) ] || { echo "0 created ${c#* }"; return; }
    [ "$1" = plain ] && rm -rf "$2/new"
    echo "${c% *} ok"
}

wl_delete() { # of files just created, on the same mount
    rm -rf "$2/new"; mkdir -p "$2/new"
    local c u
    c=$("$FSB" create "$2/new" $(n 20000) 4096)
    u=$("$FSB" unlink "$2/new" $(n 20000))
    local left
    left=$(ls -A "$2/new" | wc -l)
    [ "${c#* }" = $(n 20000) ] && [ "${u#* }" = $(n 20000) ] && [ "$left" = 0 ] || { echo "0 created ${c#* } removed ${u#* } left $left"; return; }
    echo "${u% *} ok"
}

wl_tar-x() {
    [ -f "$W/include.tar" ] || tar -C /usr -cf "$W/include.tar" include
    local a b
    a=$(date +%s%N)
    tar -xf "$W/include.tar" -C "$2"
    b=$(date +%s%N)
    local want got
    want=$(tar -tf "$W/include.tar" | wc -l)
    got=$(cd "$2" && find include | wc -l)
    [ "$got" -ge "$want" ] && echo "$(( (b - a) / 1000000 )) ok" || echo "0 extracted $got of $want"
}

wl_du-tar() { # du -s of a tree just extracted on the same mount
    [ -f "$W/include.tar" ] || tar -C /usr -cf "$W/include.tar" include
    tar -xf "$W/include.tar" -C "$2"
    local a b k
    a=$(date +%s%N)
    k=$(du -s "$2/include" | cut -f1)
    b=$(date +%s%N)
    [ "$k" -gt 0 ] && echo "$(( (b - a) / 1000000 )).$(( (b - a) / 100000 % 10 )) ok" || echo "0 du said $k"
}

# wait_seen TEST: microseconds until TEST holds (5 s at most), by the shell's
# own clock (no process per probe)
wait_seen() {
    local t0=${EPOCHREALTIME/./} t
    while ! eval "$1"; do
        t=${EPOCHREALTIME/./}
        (( t - t0 > 5000000 )) && { echo 5000000; return; }
    done
    t=${EPOCHREALTIME/./}
    echo $(( t - t0 ))
}

wl_direct() { # a name made, renamed and removed directly in a lower branch:
    # the slowest of the three until the mount shows it (ms), names the
    # kernel has cached (looked up, or missed) before each change
    local d=$W/lowers-$(lowers_of "$1")/l3/tree/d3-1 m=$2/tree/d3-1 t1 t2 t3
    [ "$1" = plain ] && d=$W/plain-ovl/tree/d3-1
    ls "$m" > /dev/null; stat "$m/f1" "$m/direct-a" "$m/direct-b" > /dev/null 2>&1
    touch "$d/direct-a"
    t1=$(wait_seen "[ -e $m/direct-a ]")
    stat "$m/direct-b" > /dev/null 2>&1
    mv "$d/direct-a" "$d/direct-b"
    t2=$(wait_seen "[ ! -e $m/direct-a ] && [ -e $m/direct-b ]")
    rm "$d/direct-b"
    t3=$(wait_seen "[ ! -e $m/direct-b ]")
    local worst=$(( t1 > t2 ? t1 : t2 ))
    worst=$(( worst > t3 ? worst : t3 ))
    (( worst < 5000000 )) || echo "direct on $1: a change not seen within 5 s" >&2
    echo "$(awk -v u=$worst 'BEGIN { printf "%.2f", u / 1000 }') ok"
}

# The deep stack: 64 layers sharing a/b/c, the file in the bottom one only.
make_deep() {
    [ -d "$W/deep" ] && return
    for l in $(seq 1 64); do mkdir -p "$W/deep/l$l/a/b/c"; touch "$W/deep/l$l/a/b/c/only$l"; done
}

lookup_at() { # layers: first lookup of a bottom-layer file, fresh mount, in microseconds
    local depth=$1 fs=$2 mnt=$W/mnt-$fs vals=() r
    for ((r = 0; r < LOOKUP_RUNS; r++)); do
        DEEP=$depth mount_fs "$fs" "$mnt" || return
        set -- $("$FSB" lookup "$mnt/a/b/c/only$depth")
        umount_fs "$mnt"
        [ "$2" = 1 ] || { echo WRONG; return; }
        vals+=("$1")
    done
    printf '%s\n' "${vals[@]}" | median
}

mount_time() {
    local fs=$1 mnt=$W/mnt-$1 a b vals=() r
    for ((r = 0; r < LOOKUP_RUNS; r++)); do
        a=$(date +%s%N)
        DEEP=64 mount_fs "$fs" "$mnt" || return
        [ -e "$mnt/a/b/c" ] || { echo WRONG; umount_fs "$mnt"; return; }
        b=$(date +%s%N)
        umount_fs "$mnt"
        vals+=("$(awk -v ns=$((b - a)) 'BEGIN { printf "%.1f", ns / 1e6 }')")
    done
    printf '%s\n' "${vals[@]}" | median
}

rss_walk() { # our daemon's RSS after a stat walk of everything (~80k entries)
    local mnt=$W/mnt-unionfs pid
    mount_fs unionfs "$mnt"
    pid=$(daemon_pid "$mnt")
    find "$mnt" -printf '%i %s\n' > /dev/null
    local count
    count=$(find "$mnt" | wc -l)
    echo "$count $(awk '/VmRSS/ { print $2 }' "/proc/$pid/status")"
    umount_fs "$mnt"
}

echo "building the trees (scale 1/$SCALE)..." >&2
for f in wh ovl none; do make_lowers "$f"; done
for fs in plain; do mount_fs plain "$W/mnt-tmp" && umount_fs "$W/mnt-tmp"; done
make_deep

run_workload stat-fresh ms
run_workload stat-second ms
run_workload readdir ms
run_workload find ms
run_workload seq-read MB/s
run_workload rand-read IOPS
run_workload seq-write MB/s
run_workload copyup-1g ms
run_workload copyup-small ms
run_workload create ms
run_workload delete ms
run_workload tar-x ms
run_workload du-tar ms
run_workload direct ms
wanted lookup && for d in 1 4 16 64; do
    units+=("lookup-$d=us")
    for fs in $FS; do
        [ "$fs" = plain ] && continue
        record "lookup-$d" "$fs" "$(lookup_at $d "$fs")"
        echo "  lookup-$d $fs ${R[lookup-$d,$fs]} us" >&2
    done
done
wanted lookup && units+=("mount-64=ms") && for fs in $FS; do
    [ "$fs" = plain ] && continue
    record mount-64 "$fs" "$(mount_time "$fs")"
    echo "  mount-64 $fs ${R[mount-64,$fs]} ms" >&2
done
read -r walked rss <<< "$(rss_walk)"

# One request's round trip on each of our transports: stats of names that
# are not there, which the kernel does not cache (negative_timeout=0): each
# is exactly one LOOKUP, answered from the daemon's index of the branch. Once
# from a client the scheduler may move, once from a client pinned to CPU 0.
round_trip() {
    local fs=$1 pin=$2 mnt=$W/mnt-$1 i pid before after out
    UNIONFS_OPTS=negative_timeout=0 mount_fs "$fs" "$mnt" || return
    for i in $(seq 1 $(n 20000)); do echo "$mnt/tree/none$i"; done > "$W/list-rtt"
    "$FSB" stat "$W/list-rtt" > /dev/null
    pid=$(daemon_pid "$mnt")
    before=$(daemon_stats "$pid")
    out=$($pin "$FSB" stat "$W/list-rtt")
    after=$(daemon_stats "$pid")
    umount_fs "$mnt"
    awk -v ms="${out% *}" -v n=$(n 20000) -v t=$(( ${after% *} - ${before% *} )) \
        'BEGIN { printf "%.1f us a request, daemon CPU %.1f us a request", ms * 1000 / n, t * 10000 / n }'
}
rtt=()
for fs in $FS; do
    case $fs in unionfs|unionfs-uring)
        rtt+=("$fs, client unpinned: $(round_trip "$fs" "")")
        rtt+=("$fs, client on CPU 0: $(round_trip "$fs" "taskset -c 0")") ;;
    esac
done

# --- the table -----------------------------------------------------------------
unit_of() { local u; for u in "${units[@]}"; do [ "${u%%=*}" = "$1" ] && { echo "${u#*=}"; return; }; done; }
higher_is_better() { case $(unit_of "$1") in MB/s|IOPS) return 0 ;; *) return 1 ;; esac; }

echo
echo "Machine: $(nproc) cores, $(free -g | awk '/Mem:/ { print $2 }') GiB, kernel $(uname -r); branches on tmpfs; scale 1/$SCALE; medians of $RUNS runs (1 for rand-read and tar-x, $LOOKUP_RUNS for lookups and mounts)."
echo
printf '| workload | unit |'
for fs in $FS; do printf ' %s |' "$fs"; done
for fs in $FS; do [ "$fs" = overlay ] || [ "$fs" = plain ] || printf ' %s/overlay |' "$fs"; done
echo
printf '|---|---|'
for fs in $FS; do printf -- '---|'; done
for fs in $FS; do [ "$fs" = overlay ] || [ "$fs" = plain ] || printf -- '---|'; done
echo
for w in "${order[@]}"; do
    printf '| %s | %s |' "$w" "$(unit_of "$w")"
    for fs in $FS; do printf ' %s |' "${R[$w,$fs]:--}"; done
    base=${R[$w,overlay]:-}
    for fs in $FS; do
        [ "$fs" = overlay ] || [ "$fs" = plain ] || {
            v=${R[$w,$fs]:-}
            if [[ "$v" =~ ^[0-9.]+$ && "$base" =~ ^[0-9.]+$ ]] && awk -v b="$base" 'BEGIN { exit !(b > 0) }'; then
                printf ' %sx |' "$(awk -v v="$v" -v b="$base" 'BEGIN { printf "%.2f", v / b }')"
            else
                printf ' - |'
            fi
        }
    done
    echo
done
echo
echo "Daemon CPU time (ticks of 10 ms) and peak RSS (MiB) per workload:"
echo
printf '| workload |'
for fs in $FS; do case $fs in plain|overlay) ;; *) printf ' %s cpu | %s rss |' "$fs" "$fs" ;; esac; done
echo
printf '|---|'
for fs in $FS; do case $fs in plain|overlay) ;; *) printf -- '---|---|' ;; esac; done
echo
for w in "${order[@]}"; do
    [ -n "${CPU[$w,unionfs]:-}${CPU[$w,unionfs-uring]:-}${CPU[$w,fuse-overlayfs]:-}" ] || continue
    printf '| %s |' "$w"
    for fs in $FS; do
        case $fs in plain|overlay) ;; *)
            r=${RSS[$w,$fs]:-}
            printf ' %s | %s |' "${CPU[$w,$fs]:--}" "$([ -n "$r" ] && awk -v k="$r" 'BEGIN { printf "%.0f", k / 1024 }' || echo -)" ;;
        esac
    done
    echo
done
echo
echo "unionfs daemon RSS after walking $walked entries: $(awk -v k="${rss:-0}" 'BEGIN { printf "%.0f", k / 1024 }') MiB"
echo
echo "Round trip of one request ($(n 20000) stats of absent names, nothing cached by the kernel):"
printf '    %s\n' "${rtt[@]}"
grep -v lazytime "$log" | grep -q . && { echo; echo "Notes from the run (errors, WRONG results):"; grep -v lazytime "$log" | sed "s/^/    /" | head -20; }
exit 0
