#!/usr/bin/env bash
# benches/compare.sh: run the same workloads on a plain directory, kernel
# overlayfs, fuse-overlayfs, unionfs-fuse and unionfs-mount (over /dev/fuse:
# "unionfs"; over FUSE over io_uring: "unionfs-uring"; with
# -o passthrough=all: "unionfs-all"; with -o passthrough=off: "unionfs-off"),
# in one run, over branches with 5 lower layers on each backing (tmpfs, and
# xfs with reflink on a loop file), and print per backing a markdown table of
# medians with each filesystem's ratio to kernel overlayfs on the same
# backing. Results are checked (a fast wrong answer is marked WRONG).
# Everything is unmounted at the end, also when interrupted. Run as root.
#
#   benches/compare.sh              the full sizes of issue #7
#   SCALE=10 benches/compare.sh     every count and size divided by 10 (a quick look)
#   RUNS=5 benches/compare.sh       repetitions of each workload (default 3; 1 for
#                                   rand-read and tar-x; LOOKUP_RUNS=15 for lookups, mounts)
#   FS="overlay unionfs" ...        a subset of filesystems
#   WORKLOADS="stat-second du-tar"  a subset of workloads ("lookup" for lookups and mounts)
#   BACKINGS=tmpfs ...              where the branches live (default "tmpfs xfs"):
#                                   tmpfs: a tmpfs at $BENCH_DIR (/tmp/unionfs-bench);
#                                   xfs: mkfs.xfs -m reflink=1 on a sparse loop file
#                                   (XFS_IMG, default $BENCH_DIR/xfs.img, made and
#                                   removed by the run; XFS_SIZE=8G), mounted at
#                                   $BENCH_DIR/xfs, lowers, uppers and mount points
#                                   all on it (one filesystem: what reflink needs)
#   REQUESTS=0 ...                  do not count FUSE requests (TRACE_KB=65536: the
#                                   trace buffer per CPU, in KiB)
# unionfs, unionfs-uring, unionfs-all and unionfs-off mount with the defaults
# (passthrough=on for the first two). unionfs-all and unionfs-off run only the
# read workloads (seq-read, rand-read, small-read); their other cells are "-".
# A filesystem that does not mount shows "mount failed". The workload small-read is
# the first read of each of the small lower files, on a fresh mount.
# unionfs-uring turns the kernel's FUSE over io_uring on for the run
# (/sys/module/fuse/parameters/enable_uring) and back as it was after.
# For our filesystems (unionfs*), the FUSE requests of each workload's
# measured part are counted with the tracepoint fuse:fuse_request_send (in a
# tracefs instance of our own, filtered to the mount's connection; tracefs is
# mounted for the run if it is not) and shown in a third table per backing,
# with the top opcodes of unionfs. The run ends with the round trip of one
# request on each of our transports (on the first backing).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
SCALE=${SCALE:-1}
RUNS=${RUNS:-3}
# first lookups and mounts take a few ms each and vary most: more runs
LOOKUP_RUNS=${LOOKUP_RUNS:-15}
FS=${FS:-"plain overlay fuse-overlayfs unionfs-fuse unionfs unionfs-uring unionfs-all unionfs-off"}
W=${BENCH_DIR:-/tmp/unionfs-bench}
BACKINGS=$(echo ${BACKINGS:-tmpfs xfs})
X=$W/xfs                              # where the xfs backing is mounted
XFS_IMG=${XFS_IMG:-$W/xfs.img}
XFS_SIZE=${XFS_SIZE:-8G}
REQUESTS=${REQUESTS:-1}
for bk in $BACKINGS; do
    case $bk in tmpfs|xfs) ;; *) echo "BACKINGS: '$bk' is not tmpfs or xfs" >&2; exit 2 ;; esac
done
n() { echo $(( $1 / SCALE > 0 ? $1 / SCALE : 1 )); }

need=()
command -v fuse-overlayfs >/dev/null || need+=(fuse-overlayfs)
command -v unionfs-fuse >/dev/null || need+=(unionfs-fuse)
command -v fio >/dev/null || need+=(fio)
command -v mount.fuse3 >/dev/null || need+=(fuse3)
[[ " $BACKINGS " == *" xfs "* ]] && ! command -v mkfs.xfs >/dev/null && need+=(xfsprogs)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
(cd "$top" && cargo build --release --quiet --bin unionfs-mount) || exit 1
UM=$top/target/release/unionfs-mount
cc -O2 -o "$W.fsbench" "$here/src/fsbench.c" 2>/dev/null || { mkdir -p "$(dirname "$W")"; cc -O2 -o "$W.fsbench" "$here/src/fsbench.c"; }
FSB=$W.fsbench

knob=/sys/module/fuse/parameters/enable_uring
knob_before=$(cat "$knob" 2>/dev/null || echo none)
# the tracefs instance that counts FUSE requests (see req_arm)
tr_dir=/sys/kernel/tracing
tr_inst=$tr_dir/instances/unionfs-bench
ev=$tr_inst/events/fuse/fuse_request_send
tr_mounted=
loopdev=
cleanup() {
    if [ -d "$tr_inst" ]; then
        echo 0 > "$ev/enable" 2>/dev/null
        rmdir "$tr_inst" 2>/dev/null
    fi
    [ -n "$tr_mounted" ] && umount "$tr_dir" 2>/dev/null && tr_mounted=
    # the xfs backing: what is mounted on it, then (once the daemons that
    # held it have gone) itself, then its loop device and file
    local m d i
    for m in $(awk -v x="$X/" 'index($2, x) == 1 { print $2 }' /proc/mounts | sort -r); do
        umount -l "$m" 2>/dev/null
    done
    if mountpoint -q "$X"; then
        for ((i = 0; i < 100; i++)); do umount "$X" 2>/dev/null && break; sleep 0.1; done
        mountpoint -q "$X" && umount -l "$X"
    fi
    # (a device still busy is detached when its last user goes)
    for d in $loopdev $(losetup -n -O NAME -j "$XFS_IMG" 2>/dev/null); do
        losetup -d "$d" 2>/dev/null
    done
    loopdev=
    rm -f "$XFS_IMG"
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

# The xfs backing, made first so that a failure ends the run at once. Online
# discard gives the space of deleted files back to the loop file's tmpfs.
if [[ " $BACKINGS " == *" xfs "* ]]; then
    mkdir -p "$X" "$(dirname "$XFS_IMG")"
    rm -f "$XFS_IMG"
    truncate -s "$XFS_SIZE" "$XFS_IMG" && mkfs.xfs -q -m reflink=1 "$XFS_IMG" &&
        loopdev=$(losetup -f --show "$XFS_IMG") && mount -o discard "$loopdev" "$X" ||
        { echo "xfs: could not make and mount $XFS_IMG at $X" >&2; exit 1; }
fi

# FUSE requests: the tracepoint fuse:fuse_request_send, in a tracefs
# instance of ours (its own buffer, filter and switch; nothing global is
# touched), with a buffer big enough for the busiest workload (events lost
# would be reported).
req_ok=      # counting works
req_on=      # counting this run (our filesystem)
req_conn=    # the event tells the connection
req_why="REQUESTS=0"
TRACE_KB=${TRACE_KB:-65536}   # per CPU
if [ "$REQUESTS" != 0 ]; then
    req_why="no tracefs"
    mountpoint -q "$tr_dir" || { mount -t tracefs nodev "$tr_dir" 2>/dev/null && tr_mounted=1; }
    if [ -d "$tr_dir/events/fuse/fuse_request_send" ]; then
        req_why="no tracefs instance"
        if mkdir "$tr_inst" 2>/dev/null && echo "$TRACE_KB" > "$tr_inst/buffer_size_kb"; then
            req_ok=1
            grep -q 'field:.*[[:space:]]connection;' "$ev/format" && req_conn=1
        fi
    else
        mountpoint -q "$tr_dir" && req_why="this kernel has no tracepoint fuse:fuse_request_send"
    fi
fi

# --- the trees -------------------------------------------------------------
# Lower layers: five trees, each a fifth of the 50k-file stat tree, a fifth of
# the 20k-entry merged directory (the top layer whites out 1000 of the lower
# names), 2000 of the 10k small files, and (in the bottom one) a 1 GiB file.
# Whiteouts differ by format: .wh. files for unionfs, 0/0 char devices for the
# overlay family, none for unionfs-fuse (it has no lower-layer format).
make_lowers() {
    local fmt=$1 base=$B/lowers-$1 i j
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
    # (a link must stay on the backing: the xfs one gets its own copy)
    [ -f "$B/file1g" ] || cp "$W/file1g" "$B/file1g"
    ln "$B/file1g" "$base/l5/file1g"
}

lowers_of() {
    case $1 in unionfs|unionfs-*) echo wh ;; unionfs-fuse) echo none ;; *) echo ovl ;; esac
}

ours() { case $1 in unionfs|unionfs-uring|unionfs-all|unionfs-off) return 0 ;; *) return 1 ;; esac; }
# the passthrough variants run the read workloads only
reads_only() { case $1 in unionfs-all|unionfs-off) return 0 ;; *) return 1 ;; esac; }
is_read() { case $1 in seq-read|rand-read|small-read) return 0 ;; *) return 1 ;; esac; }

# mount_fs FS MNT [NLOWER]: a fresh, empty upper over the lowers (or over
# NLOWER layers of the deep stack when NLOWER is given with DEEP=1).
mount_fs() {
    local fs=$1 mnt=$2 fmt base up=$B/upper-$1 wk=$B/work-$1 lowers spec l
    fmt=$(lowers_of "$fs")
    base=$B/lowers-$fmt
    rm -rf "$up" "$wk"
    mkdir -p "$up" "$wk" "$mnt"
    local ls=()
    if [ -n "${DEEP:-}" ]; then
        for ((l = 1; l <= DEEP; l++)); do ls+=("$B/deep/l$l"); done
    else
        for l in 1 2 3 4 5; do ls+=("$base/l$l"); done
    fi
    lowers=$(IFS=:; echo "${ls[*]}")
    case $fs in
    plain)
        # the merged view, copied once: the baseline without any union
        if [ -z "${DEEP:-}" ]; then
            [ -d "$B/plain-$fmt" ] || { mkdir -p "$B/plain-$fmt"; for ((l = 5; l >= 1; l--)); do cp -a "$base/l$l/." "$B/plain-$fmt/"; done; find "$B/plain-$fmt" -name '.wh.*' -delete; find "$B/plain-$fmt" -type c -delete; }
            mount --bind "$B/plain-$fmt" "$mnt"
        else
            mount --bind "${ls[-1]}" "$mnt"
        fi ;;
    overlay) mount -t overlay overlay -o "lowerdir=$lowers,upperdir=$up,workdir=$wk" "$mnt" ;;
    fuse-overlayfs) fuse-overlayfs -o "lowerdir=$lowers,upperdir=$up,workdir=$wk" "$mnt" 2>>"$log" ;;
    unionfs-fuse)
        spec="$up=RW"; for l in "${ls[@]}"; do spec="$spec:$l=RO"; done
        unionfs-fuse -o cow,use_ino,allow_other "$spec" "$mnt" 2>>"$log" ;;
    unionfs|unionfs-uring|unionfs-all|unionfs-off)
        local ring=off pt=
        [ "$fs" = unionfs-uring ] && ring=on
        case $fs in unionfs-all) pt=passthrough=all, ;; unionfs-off) pt=passthrough=off, ;; esac
        spec="$up=rw"; for l in "${ls[@]}"; do spec="$spec:$l=ro"; done
        # default options (udba=notify: long kernel caching, direct changes followed)
        "$UM" -o "${UNIONFS_OPTS:+$UNIONFS_OPTS,}${pt}io_uring=$ring" "$spec" "$mnt" ;;
    esac
}

umount_fs() {
    umount "$1" 2>/dev/null || umount -l "$1"
}

daemon_pid() {
    local mnt=$1
    for p in /proc/[0-9]*; do
        # (the mount point ends the command line: mnt-unionfs is not mnt-unionfs-all)
        tr '\0' ' ' 2>/dev/null < "$p/cmdline" | grep -q -- " $mnt \$" && { basename "$p"; return; }
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

declare -A R   # R[backing,workload,fs] = value
declare -A CPU RSS REQ OPS
units=()
order=()
BK=tmpfs       # the backing being measured
B=$W           # where its branches and mount points are
at=            # " [BK]" in the notes when there are several backings
[ "$BACKINGS" = "${BACKINGS%% *}" ] || at=1

record() { # workload fs value (on backing $BK)
    R[$BK,$1,$2]=$3
    if ! printf '%s\n' "${order[@]}" | grep -qx -- "$1"; then order+=("$1"); fi
}

# --- FUSE requests ---------------------------------------------------------------
# run_workload arms the count around a workload's body (req_arm, req_to);
# a body whose measured part is narrower (a set-up, a check after the clock)
# marks it with req_from ... req_to, which clears what came before.
req_arm() { # MNT: count the requests of MNT's connection only
    [ -n "$req_on" ] || return 0
    if [ -n "$req_conn" ]; then
        # the event's connection is the kernel dev_t of the mount (major << 20 | minor)
        local dev
        dev=$(mountpoint -d "$1") || return 1
        echo "connection == $(( (${dev%:*} << 20) | ${dev#*:} ))" > "$ev/filter"
    fi
    req_from
}
req_from() { # (re)start counting from zero
    [ -n "$req_on" ] || return 0
    echo 0 > "$ev/enable"
    : > "$tr_inst/trace"      # (opening it with O_TRUNC clears the buffer)
    echo 1 > "$ev/enable"
}
req_to() {
    [ -n "$req_on" ] || return 0
    echo 0 > "$ev/enable"
}
req_count() { # "TOTAL[+] OP COUNT OP COUNT ..." (most first; + when events were lost)
    local lost
    lost=$(cat "$tr_inst"/per_cpu/cpu*/stats 2>/dev/null | awk '/^(overrun|commit overrun|dropped events):/ { s += $NF } END { print s + 0 }')
    grep -v '^#' "$tr_inst/trace" | awk '
        match($0, /opcode [0-9]+ \([A-Z_0-9]+\)/) {
            op = substr($0, RSTART, RLENGTH); sub(/.*\(/, "", op); sub(/\)$/, "", op); sub(/^FUSE_/, "", op)
            c[op]++; n++
        }
        / \[LOST [0-9]+ EVENTS\]/ { lostlines++ }
        END { for (o in c) print c[o], o; print n + 0, "TOTAL", lostlines + 0 }' |
        sort -k1,1nr | awk -v lost="$lost" '
        $2 == "TOTAL" { total = $1 ($3 > 0 || lost > 0 ? "+" : ""); next }
        { ops = ops " " $2 " " $1 }
        END { print total ops }'
}

# run_workload NAME UNIT FS... : the body is in the function wl_NAME FS MNT,
# which prints "value check" (check = "ok" or a reason).
wanted() { [ -z "${WORKLOADS:-}" ] || [[ " $WORKLOADS " == *" $1 "* ]]; }

run_workload() {
    local name=$1 unit=$2 fs mnt v vals pid before after counts reqs
    wanted "$name" || return 0
    add_unit "$name=$unit"
    for fs in $FS; do
        # (not mounted: its cell stays "-")
        reads_only "$fs" && ! is_read "$name" && continue
        vals=()
        reqs=()
        local runs=$RUNS
        case $name in rand-read|tar-x|du-tar) runs=1 ;; esac
        for ((r = 0; r < runs; r++)); do
            mnt=$B/mnt-$fs
            mount_fs "$fs" "$mnt" || { echo "$name on $fs${at:+ [$BK]}: mount failed" >> "$log"; record "$name" "$fs" "mount failed"; continue 2; }
            pid=$(daemon_pid "$mnt")
            req_on=
            [ -n "$req_ok" ] && ours "$fs" && req_on=1
            req_arm "$mnt" || { echo "$name on $fs${at:+ [$BK]}: no connection for the request count" >> "$log"; req_on=; }
            # On xfs every read workload starts cold (the image on a loop
            # device): a reflink clone has a page cache of its own, never
            # warm when made, so only cold reads compare like with like.
            if [ "$BK" = xfs ] && [[ " seq-read rand-read small-read " == *" $name "* ]]; then
                sync
                echo 3 > /proc/sys/vm/drop_caches
            fi
            before=$(daemon_stats "$pid")
            out=$("wl_$name" "$fs" "$mnt" 2>>"$log")
            after=$(daemon_stats "$pid")
            req_to
            if [ -n "$req_on" ]; then
                counts=$(req_count)
                reqs+=("${counts%% *}")
                OPS[$BK,$name,$fs]=${counts#"${counts%% *}"}
                req_on=
            fi
            umount_fs "$mnt"
            # (its space back at once: the next mount empties it anyway)
            rm -rf "$B/upper-$fs" "$B/work-$fs"
            v=${out%% *}
            check=${out#* }
            if [ "$check" != ok ]; then
                echo "$name on $fs${at:+ [$BK]}: WRONG ($check)" >> "$log"
                v="WRONG"
            fi
            vals+=("$v")
            if [ -n "$pid" ]; then
                CPU[$BK,$name,$fs]=$(( ${after% *} - ${before% *} ))
                RSS[$BK,$name,$fs]=${after#* }
            fi
        done
        if printf '%s\n' "${vals[@]}" | grep -q WRONG; then
            record "$name" "$fs" WRONG
        else
            record "$name" "$fs" "$(printf '%s\n' "${vals[@]}" | median)"
        fi
        if [ ${#reqs[@]} -gt 0 ]; then
            # the median of the runs; "+" when a run lost events (a lower bound)
            REQ[$BK,$name,$fs]=$(printf '%s\n' "${reqs[@]}" | tr -d + | median)
            printf '%s\n' "${reqs[@]}" | grep -q + && REQ[$BK,$name,$fs]+=+
        fi
        echo "  $name $fs ${R[$BK,$name,$fs]} $unit${REQ[$BK,$name,$fs]:+, ${REQ[$BK,$name,$fs]} requests}" >&2
    done
}

ms() { awk '{ printf "%.1f", $1 }'; }

# --- workloads ---------------------------------------------------------------
N_TREE=$(( $(n 100) * 100 * 5 ))     # files of the stat tree
N_BIG=$(( $(n 4000) * 5 - $(n 1000) ))

list_tree() { # the stat tree's paths under MNT
    (cd "$B/plain-ovl" && find tree -type f) | sed "s#^#$1/#" > "$W/list-$2"
}

wl_stat-fresh() {
    list_tree "$2" "$1"
    set -- $("$FSB" stat "$W/list-$1")
    [ "$2" = "$N_TREE" ] && echo "$1 ok" || echo "$1 stat'ed $2 of $N_TREE"
}

wl_stat-second() {
    list_tree "$2" "$1"
    "$FSB" stat "$W/list-$1" > /dev/null
    req_from
    set -- $("$FSB" stat "$W/list-$1")
    req_to
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
    req_from
    a=$(date +%s%N)
    c=$(find "$2" | wc -l)
    b=$(date +%s%N)
    req_to
    [ "$c" -gt "$N_TREE" ] && echo "$(( (b - a) / 1000000 )) ok" || echo "0 found $c"
}

wl_seq-read() {
    local a b sum
    req_from
    a=$(date +%s%N)
    dd if="$2/file1g" of=/dev/null bs=1M 2>/dev/null
    b=$(date +%s%N)
    req_to
    local mb=$(( 1024 / SCALE ))
    # checked after the clock stops: the checksum's own cost is not measured
    sum=$(md5sum < "$2/file1g" | cut -d' ' -f1)
    [ "$sum" = "$(cat "$W/file1g.md5")" ] || { echo "0 checksum"; return; }
    echo "$(awk -v mb=$mb -v ns=$((b - a)) 'BEGIN { printf "%.0f", mb / (ns / 1e9) }') ok"
}

wl_small-read() { # the first read of each small file (5 x 2000 of 4 KiB), fresh mount
    (cd "$B/plain-ovl" && find small -type f) | sed "s#^#$2/#" > "$W/list-$1"
    req_from
    set -- $("$FSB" read "$W/list-$1")
    req_to
    local want=$(( $(n 2000) * 5 * 4096 ))
    [ "$2" = "$want" ] && echo "$1 ok" || echo "$1 read $2 bytes of $want"
}

wl_rand-read() {
    local iops
    iops=$(fio --name=rr --filename="$2/file1g" --rw=randread --bs=4k --ioengine=psync --runtime=$(( 10 / SCALE + 2 )) --time_based --readonly --output-format=terse 2>>"$log" | awk -F';' '{ print $8 }')
    [ -n "$iops" ] && echo "$iops ok" || echo "0 fio failed"
}

wl_seq-write() {
    local a b mb=$(( 1024 / SCALE ))
    req_from
    a=$(date +%s%N)
    dd if=/dev/zero of="$2/newfile" bs=1M count=$mb conv=fsync 2>/dev/null
    b=$(date +%s%N)
    req_to
    [ "$(stat -c %s "$2/newfile")" = $(( mb * 1048576 )) ] || { echo "0 size"; return; }
    echo "$(awk -v mb=$mb -v ns=$((b - a)) 'BEGIN { printf "%.0f", mb / (ns / 1e9) }') ok"
}

wl_copyup-1g() {
    local a b size=$(( 1024 * 1024 * 1024 / SCALE ))
    req_from
    a=$(date +%s%N)
    echo x >> "$2/file1g"
    b=$(date +%s%N)
    req_to
    [ "$(stat -c %s "$2/file1g")" = $(( size + 2 )) ] || { echo "0 size"; return; }
    # the plain baseline has no upper layer to throw away: undo the append
    [ "$1" = plain ] && truncate -s "$size" "$2/file1g"
    echo "$(( (b - a) / 1000000 )) ok"
}

wl_copyup-small() {
    (cd "$B/plain-ovl" && find small -type f) | sed "s#^#$2/#" > "$W/list-$1"
    set -- $("$FSB" chmod "$W/list-$1")
    [ "$2" = $(( $(n 2000) * 5 )) ] && echo "$1 ok" || echo "$1 chmod'ed $2"
}

wl_create() {
    # (the plain baseline keeps its directory between runs)
    rm -rf "$2/new"; mkdir -p "$2/new"
    local c
    req_from
    c=$("$FSB" create "$2/new" $(n 20000) 4096)
    req_to
    [ "${c#* }" = $(n 20000) ] && [ "$(ls -A "$2/new" | wc -l)" = $(n 20000) ] || { echo "0 created ${c#* }"; return; }
    [ "$1" = plain ] && rm -rf "$2/new"
    echo "${c% *} ok"
}

wl_delete() { # of files just created, on the same mount
    rm -rf "$2/new"; mkdir -p "$2/new"
    local c u
    c=$("$FSB" create "$2/new" $(n 20000) 4096)
    req_from
    u=$("$FSB" unlink "$2/new" $(n 20000))
    req_to
    local left
    left=$(ls -A "$2/new" | wc -l)
    [ "${c#* }" = $(n 20000) ] && [ "${u#* }" = $(n 20000) ] && [ "$left" = 0 ] || { echo "0 created ${c#* } removed ${u#* } left $left"; return; }
    echo "${u% *} ok"
}

wl_tar-x() {
    [ -f "$W/include.tar" ] || tar -C /usr -cf "$W/include.tar" include
    local a b
    req_from
    a=$(date +%s%N)
    tar -xf "$W/include.tar" -C "$2"
    b=$(date +%s%N)
    req_to
    local want got
    want=$(tar -tf "$W/include.tar" | wc -l)
    got=$(cd "$2" && find include | wc -l)
    [ "$got" -ge "$want" ] && echo "$(( (b - a) / 1000000 )) ok" || echo "0 extracted $got of $want"
}

wl_du-tar() { # du -s of a tree just extracted on the same mount
    [ -f "$W/include.tar" ] || tar -C /usr -cf "$W/include.tar" include
    tar -xf "$W/include.tar" -C "$2"
    local a b k
    req_from
    a=$(date +%s%N)
    k=$(du -s "$2/include" | cut -f1)
    b=$(date +%s%N)
    req_to
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
    local d=$B/lowers-$(lowers_of "$1")/l3/tree/d3-1 m=$2/tree/d3-1 t1 t2 t3
    [ "$1" = plain ] && d=$B/plain-ovl/tree/d3-1
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
    [ -d "$B/deep" ] && return
    for l in $(seq 1 64); do mkdir -p "$B/deep/l$l/a/b/c"; touch "$B/deep/l$l/a/b/c/only$l"; done
}

lookup_at() { # layers: first lookup of a bottom-layer file, fresh mount, in microseconds
    local depth=$1 fs=$2 mnt=$B/mnt-$fs vals=() r
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
    local fs=$1 mnt=$B/mnt-$1 a b vals=() r
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
    local mnt=$B/mnt-unionfs pid
    mount_fs unionfs "$mnt"
    pid=$(daemon_pid "$mnt")
    find "$mnt" -printf '%i %s\n' > /dev/null
    local count
    count=$(find "$mnt" | wc -l)
    echo "$count $(awk '/VmRSS/ { print $2 }' "/proc/$pid/status")"
    umount_fs "$mnt"
}

# One request's round trip on each of our transports: stats of names that
# are not there, which the kernel does not cache (negative_timeout=0): each
# is exactly one LOOKUP, answered from the daemon's index of the branch. Once
# from a client the scheduler may move, once from a client pinned to CPU 0.
round_trip() {
    local fs=$1 pin=$2 mnt=$B/mnt-$1 i pid before after out
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

add_unit() { printf '%s\n' "${units[@]}" | grep -qx -- "$1" || units+=("$1"); }

rtt=()
first=1
for BK in $BACKINGS; do
    case $BK in tmpfs) B=$W ;; xfs) B=$X ;; esac
    echo "branches on $BK: building the trees (scale 1/$SCALE)..." >&2
    for f in wh ovl none; do make_lowers "$f"; done
    for fs in plain; do mount_fs plain "$B/mnt-tmp" && umount_fs "$B/mnt-tmp"; done
    make_deep

    run_workload stat-fresh ms
    run_workload stat-second ms
    run_workload readdir ms
    run_workload find ms
    run_workload seq-read MB/s
    run_workload rand-read IOPS
    run_workload small-read ms
    run_workload seq-write MB/s
    run_workload copyup-1g ms
    run_workload copyup-small ms
    run_workload create ms
    run_workload delete ms
    run_workload tar-x ms
    run_workload du-tar ms
    run_workload direct ms
    wanted lookup && for d in 1 4 16 64; do
        add_unit "lookup-$d=us"
        for fs in $FS; do
            [ "$fs" = plain ] && continue
            reads_only "$fs" && continue
            record "lookup-$d" "$fs" "$(lookup_at $d "$fs")"
            echo "  lookup-$d $fs ${R[$BK,lookup-$d,$fs]} us" >&2
        done
    done
    wanted lookup && add_unit "mount-64=ms" && for fs in $FS; do
        [ "$fs" = plain ] && continue
        reads_only "$fs" && continue
        record mount-64 "$fs" "$(mount_time "$fs")"
        echo "  mount-64 $fs ${R[$BK,mount-64,$fs]} ms" >&2
    done
    if [ -n "$first" ]; then
        read -r walked rss <<< "$(rss_walk)"
        for fs in $FS; do
            case $fs in unionfs|unionfs-uring)
                rtt+=("$fs, client unpinned: $(round_trip "$fs" "")")
                rtt+=("$fs, client on CPU 0: $(round_trip "$fs" "taskset -c 0")") ;;
            esac
        done
        first=
    fi
    # room for the next backing: this one's upper layers go
    rm -rf "$B"/upper-* "$B"/work-*
done

# --- the tables ----------------------------------------------------------------
unit_of() { local u; for u in "${units[@]}"; do [ "${u%%=*}" = "$1" ] && { echo "${u#*=}"; return; }; done; }
higher_is_better() { case $(unit_of "$1") in MB/s|IOPS) return 0 ;; *) return 1 ;; esac; }
heading_of() { case $1 in tmpfs) echo "Branches on tmpfs" ;; xfs) echo "Branches on xfs (reflink=1, loop file)" ;; esac; }

echo
echo "Machine: $(nproc) cores, $(free -g | awk '/Mem:/ { print $2 }') GiB, kernel $(uname -r); branches on ${BACKINGS// / and }; scale 1/$SCALE; medians of $RUNS runs (1 for rand-read and tar-x, $LOOKUP_RUNS for lookups and mounts)."
ourfs=()
for fs in $FS; do ours "$fs" && ourfs+=("$fs"); done
for BK in $BACKINGS; do
    echo
    heading_of "$BK"
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
        for fs in $FS; do printf ' %s |' "${R[$BK,$w,$fs]:--}"; done
        base=${R[$BK,$w,overlay]:-}
        for fs in $FS; do
            [ "$fs" = overlay ] || [ "$fs" = plain ] || {
                v=${R[$BK,$w,$fs]:-}
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
        any=
        for fs in $FS; do any+=${CPU[$BK,$w,$fs]:-}; done
        [ -n "$any" ] || continue
        printf '| %s |' "$w"
        for fs in $FS; do
            case $fs in plain|overlay) ;; *)
                r=${RSS[$BK,$w,$fs]:-}
                printf ' %s | %s |' "${CPU[$BK,$w,$fs]:--}" "$([ -n "$r" ] && awk -v k="$r" 'BEGIN { printf "%.0f", k / 1024 }' || echo -)" ;;
            esac
        done
        echo
    done
    [ ${#ourfs[@]} -gt 0 ] || continue
    echo
    if [ -z "$req_ok" ]; then
        echo "FUSE requests per workload: not counted ($req_why)."
        continue
    fi
    echo "FUSE requests per workload (fuse:fuse_request_send on the mount's connection, during the measured part; medians; + : events were lost, a lower bound):"
    echo
    printf '| workload |'
    for fs in "${ourfs[@]}"; do printf ' %s |' "$fs"; done
    echo
    printf '|---|'
    for fs in "${ourfs[@]}"; do printf -- '---|'; done
    echo
    tops=()
    for w in "${order[@]}"; do
        any=
        for fs in "${ourfs[@]}"; do any+=${REQ[$BK,$w,$fs]:-}; done
        [ -n "$any" ] || continue
        printf '| %s |' "$w"
        for fs in "${ourfs[@]}"; do printf ' %s |' "${REQ[$BK,$w,$fs]:--}"; done
        echo
        [ -n "${OPS[$BK,$w,unionfs]:-}" ] &&
            tops+=("$w unionfs: $(awk '{ for (i = 1; i + 1 <= NF && i < 8; i += 2) printf "%s%s %s", (i > 1 ? ", " : ""), $i, $(i + 1) }' <<< "${OPS[$BK,$w,unionfs]}")")
    done
    [ ${#tops[@]} -gt 0 ] && { echo; echo "Top opcodes (unionfs, last run):"; printf '    %s\n' "${tops[@]}"; }
done
echo
[ -n "${walked:-}" ] && echo "unionfs daemon RSS after walking $walked entries: $(awk -v k="${rss:-0}" 'BEGIN { printf "%.0f", k / 1024 }') MiB"
echo
echo "Round trip of one request ($(n 20000) stats of absent names, nothing cached by the kernel):"
printf '    %s\n' "${rtt[@]}"
grep -v lazytime "$log" | grep -q . && { echo; echo "Notes from the run (errors, WRONG results):"; grep -v lazytime "$log" | sed "s/^/    /" | head -20; }
exit 0
