#!/usr/bin/env bash
# Sign a panelsrv API request in the unambiguous form (sign_version=2) and send it.
#
#     PANEL_URL=https://your-panel.example/api/v2 PANEL_KEY=your-api-key bash sign_v2.sh
#
# bash 4+, curl, openssl. The signed string: every field but `sign`, name and value
# percent-encoded (RFC 3986: every UTF-8 byte but A-Z a-z 0-9 - . _ ~ as %XX, upper-case hex),
# the pairs sorted by encoded name, `name=value` joined by `&`;
# sign = hex(HMAC-SHA256(api key, signed string)).
set -euo pipefail

# RFC 3986 percent-encoding, byte by byte (LC_ALL=C: a character is a byte).
pct() {
  local LC_ALL=C text=$1 out='' c i
  for ((i = 0; i < ${#text}; i++)); do
    c=${text:i:1}
    case $c in
      [A-Za-z0-9._~-]) out+=$c ;;
      *) printf -v c '%%%02X' "'$c"; out+=$c ;;
    esac
  done
  printf '%s' "$out"
}

declare -A fields=(
  [key]="$PANEL_KEY"
  [action]=add
  [service]="${PANEL_SERVICE:-1234}"
  # A link with `&` in its query: the seeds' form cannot sign it unambiguously.
  [link]="${PANEL_LINK:-https://www.youtube.com/watch?v=abc&t=42&action=x}"
  [quantity]="${PANEL_QUANTITY:-1000}"
  [sign_version]=2
  [timestamp]="$(date +%s)"
)

# One encoded pair per line (no encoded text holds a newline, `=` or `&`), sorted by name.
canonical=$(
  for name in "${!fields[@]}"; do
    printf '%s=%s\n' "$(pct "$name")" "$(pct "${fields[$name]}")"
  done | LC_ALL=C sort -t= -k1,1 | paste -sd'&' -
)
sign=$(printf '%s' "$canonical" | openssl dgst -sha256 -hmac "$PANEL_KEY" | sed 's/^.* //')

args=()
for name in "${!fields[@]}"; do
  args+=(--data-urlencode "$name=${fields[$name]}")
done
curl -sS --fail-with-body "${PANEL_URL:-https://your-panel.example/api/v2}" \
  "${args[@]}" --data-urlencode "sign=$sign"
echo
