#!/usr/bin/env bash
# Network sysctl settings for THEMIS from the deployment guide
# ("Performance Tuning" > "Network Tuning (Linux)").
#
# By default this only reports: for each setting it prints the current value
# and the value it would set, and changes nothing. With --apply it sets them
# with `sysctl -w` (needs root). Settings applied this way last until reboot;
# see --help for making them permanent.
set -euo pipefail

# name=value pairs, in the order the guide lists them.
SETTINGS=(
    "net.core.rmem_max=16777216"              # max socket receive buffer (bytes)
    "net.core.wmem_max=16777216"              # max socket send buffer (bytes)
    "net.ipv4.tcp_rmem=4096 87380 16777216"   # TCP receive buffer min/default/max
    "net.ipv4.tcp_wmem=4096 65536 16777216"   # TCP send buffer min/default/max
    "net.ipv4.tcp_fastopen=3"                 # TCP Fast Open for clients and servers
    "net.core.somaxconn=4096"                 # cap on listen backlogs (server.listen_backlog)
)

usage() {
    cat <<'USAGE'
Usage: network-sysctl.sh [--apply] [--help]

Shows the network sysctl settings recommended for THEMIS next to their
current values. Changes nothing unless --apply is given. A value that is
already at least as large as the recommended one is kept, never lowered.

Options:
  --apply   Set each value that is below the recommendation with
            `sysctl -w` (must run as root).
  --help    Show this help and exit.

Values set with --apply are lost at reboot. To keep them, put the lines
printed under "persistent form" into /etc/sysctl.d/90-themis.conf and run
`sysctl --system`.

Note: net.core.somaxconn caps server.listen_backlog (default 1024).
USAGE
}

apply=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --apply) apply=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "network-sysctl.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

if ! command -v sysctl >/dev/null 2>&1; then
    echo "network-sysctl.sh: sysctl not found (package procps)" >&2
    exit 1
fi

if [[ "$apply" -eq 1 && "$(id -u)" -ne 0 ]]; then
    echo "network-sysctl.sh: --apply needs root (try: sudo $0 --apply)" >&2
    exit 1
fi

# Collapse runs of whitespace (sysctl prints tabs between multi-value fields).
normalize() {
    local -a parts
    read -r -a parts <<<"$1"
    printf '%s' "${parts[*]}"
}

# True when the current value is already at least as generous as the
# recommended one, so --apply never lowers a value someone raised on purpose.
# tcp_fastopen is a bitmask: enough when both bits of 3 are set.
# Multi-value settings (tcp_rmem/tcp_wmem) compare field by field.
already_enough() {
    local name="$1" cur="$2" want="$3" i
    local -a c w
    read -r -a c <<<"$cur"
    read -r -a w <<<"$want"
    [[ ${#c[@]} -eq ${#w[@]} ]] || return 1
    for ((i = 0; i < ${#w[@]}; i++)); do
        [[ "${c[i]}" =~ ^[0-9]+$ && "${w[i]}" =~ ^[0-9]+$ ]] || return 1
    done
    if [[ "$name" == "net.ipv4.tcp_fastopen" ]]; then
        (( (c[0] & w[0]) == w[0] ))
        return
    fi
    for ((i = 0; i < ${#w[@]}; i++)); do
        (( c[i] >= w[i] )) || return 1
    done
}

failed=0
changed=0
printf '%-24s %-26s %-26s %s\n' "SETTING" "CURRENT" "RECOMMENDED" "STATUS"
for entry in "${SETTINGS[@]}"; do
    name="${entry%%=*}"
    want="${entry#*=}"
    if ! raw="$(sysctl -n "$name" 2>/dev/null)"; then
        printf '%-24s %-26s %-26s %s\n' "$name" "(unavailable)" "$want" "skipped"
        continue
    fi
    cur="$(normalize "$raw")"
    if [[ "$cur" == "$want" ]]; then
        status="ok"
    elif already_enough "$name" "$cur" "$want"; then
        status="ok (kept, not lower)"
    elif [[ "$apply" -eq 1 ]]; then
        if sysctl -q -w "$name=$want" >/dev/null; then
            status="applied"
            changed=$((changed + 1))
        else
            status="FAILED"
            failed=$((failed + 1))
        fi
    else
        status="would set"
    fi
    printf '%-24s %-26s %-26s %s\n' "$name" "$cur" "$want" "$status"
done

echo
echo "persistent form, the guide's values (/etc/sysctl.d/90-themis.conf):"
for entry in "${SETTINGS[@]}"; do
    printf '  %s = %s\n' "${entry%%=*}" "${entry#*=}"
done

if [[ "$apply" -eq 0 ]]; then
    echo
    echo "Nothing changed. Run as root with --apply to set these values."
else
    echo
    echo "Applied $changed setting(s); $failed failure(s)."
fi

if [[ "$failed" -gt 0 ]]; then
    exit 1
fi
