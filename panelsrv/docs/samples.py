"""The portal's code samples, written out per language from one description of each call.

Pure: standard library only. A sample is text for a <pre> (the template escapes it); every
value in it is quoted for its language here (shell single quotes, PHP single quotes, JSON string
literals for Python and JavaScript), so a domain or a service name cannot break out of a string.

Each sample runs as it stands once its placeholders are replaced (the test suite does exactly
that: tests/docs/test_portal_samples.py): `curl` and `shell` samples are bash scripts, `php`
ones PHP 7.1+ CLI scripts with the curl extension, `python` ones Python 3.8+ with `requests`
(signing and verifying: standard library only), `node` ones ES modules for Node 18+ (global
fetch). A request sample prints the JSON answer on success and exits non-zero otherwise:
a non-200 status, or an `error` field (a panel with `legacy_errors` answers errors with 200).
"""

from __future__ import annotations

import json
import re
from typing import NamedTuple

# Replaced by the reader (and by the tests) with their own values.
KEY = "YOUR_API_KEY"
ORDER_ID = "ORDER_ID"
ORDER_IDS = "ORDER_ID,ORDER_ID_2"
REFILL_ID = "REFILL_ID"
WEBHOOK_ID = "WEBHOOK_ID"
WEBHOOK_URL = "https://your-server.example/panel-webhook"

# (data-sample value, what the tab is called)
REQUEST_LANGUAGES = (("curl", "curl"), ("php", "PHP"), ("python", "Python"), ("node", "Node.js"))
VERIFY_LANGUAGES = (("shell", "bash + openssl"), ("php", "PHP"), ("python", "Python"),
                    ("node", "Node.js"))  # fmt: skip

Fields = tuple[tuple[str, str], ...]


class Sample(NamedTuple):
    language: str  # data-sample: curl, shell, php, python, python-client, node
    label: str
    code: str


_SHELL_SAFE = re.compile(r"[A-Za-z0-9_.,:/@%+=-]+")


def sh(text: str) -> str:
    """A shell word holding exactly `text`."""
    return text if _SHELL_SAFE.fullmatch(text) else "'" + text.replace("'", "'\\''") + "'"


def php(text: str) -> str:
    """A single-quoted PHP string literal of `text`."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def js(text: str) -> str:
    """A string literal of `text`, valid in Python and JavaScript alike."""
    return json.dumps(text, ensure_ascii=False)


_FORM_SAFE = re.compile(r"[A-Za-z0-9_.,~-]*")


def _curl_fields(fields: Fields) -> list[str]:
    return [
        f"-d {name}={value}"
        if _FORM_SAFE.fullmatch(value)
        else f"--data-urlencode {sh(f'{name}={value}')}"
        for name, value in fields
    ]


def _lines(head: str, items: list[str], indent: str, tail: str) -> str:
    return head + "".join(f"\n{indent}{item}" for item in items) + "\n" + tail


def curl_request(url: str, fields: Fields, extra: tuple[str, ...] = ()) -> str:
    args = [*extra, *_curl_fields(fields)]
    return (
        f"curl -sS --fail-with-body {sh(url)}" + "".join(f" \\\n  {a}" for a in args) + "\necho\n"
    )


def _php_array(fields: Fields, indent: str) -> str:
    return _lines("[", [f"{php(n)} => {php(v)}," for n, v in fields], indent + "    ", indent + "]")


_PHP_CHECK = """$status = curl_getinfo($ch, CURLINFO_RESPONSE_CODE);
$answer = json_decode((string) $body, true);
if ($status !== 200 || !is_array($answer) || isset($answer['error'])) {
    fwrite(STDERR, "$status: $body\\n");
    exit(1);
}
echo $body, "\\n";
"""


def php_request(url: str, fields: Fields) -> str:
    return f"""<?php
$ch = curl_init({php(url)});
curl_setopt_array($ch, [
    CURLOPT_POST => true,
    CURLOPT_POSTFIELDS => http_build_query({_php_array(fields, "    ")}),
    CURLOPT_RETURNTRANSFER => true,
    CURLOPT_TIMEOUT => 30,
]);
$body = curl_exec($ch);
{_PHP_CHECK}"""


def _py_dict(fields: Fields, indent: str) -> str:
    return _lines("{", [f"{js(n)}: {js(v)}," for n, v in fields], indent + "    ", indent + "}")


_PY_CHECK = """answer = reply.json()
if reply.status_code != 200 or "error" in answer:
    raise SystemExit(f"{reply.status_code}: {reply.text}")
print(reply.text)
"""


def python_request(url: str, fields: Fields) -> str:
    return f"""import requests

reply = requests.post(
    {js(url)},
    data={_py_dict(fields, "    ")},
    timeout=30,
)
{_PY_CHECK}"""


_NODE_CHECK = """const answer = await reply.json();
if (!reply.ok || answer.error) {
  console.error(reply.status, answer);
  process.exit(1);
}
console.log(JSON.stringify(answer));
"""


def _node_object(fields: Fields, indent: str) -> str:
    return _lines("{", [f"{js(n)}: {js(v)}," for n, v in fields], indent + "  ", indent + "}")


def node_request(url: str, fields: Fields) -> str:
    return f"""// Node 18+, as an ES module (request.mjs): fetch is built in.
const reply = await fetch({js(url)}, {{
  method: "POST",
  body: new URLSearchParams({_node_object(fields, "  ")}),
}});
{_NODE_CHECK}"""


def request(url: str, fields: Fields) -> list[Sample]:
    """One call of the API (`fields` include key and action), form-encoded, in each language."""
    code = {
        "curl": curl_request(url, fields),
        "php": php_request(url, fields),
        "python": python_request(url, fields),
        "node": node_request(url, fields),
    }
    return [Sample(lang, label, code[lang]) for lang, label in REQUEST_LANGUAGES]


# -- idempotency: an add that may be resent ----------------------------------------------------


def idempotent(url: str, fields: Fields) -> list[Sample]:
    """An `add` with an Idempotency-Key, resent after a lost connection, a 409 (the first
    attempt still in flight), a 429 or a 503 (after Retry-After): one order however often."""
    curl = (
        "IDEMPOTENCY_KEY=$(openssl rand -hex 16)  # one per order: store it with the order\n"
        + curl_request(url, fields, ("--retry 5 --retry-connrefused",
                                     '-H "Idempotency-Key: $IDEMPOTENCY_KEY"'))
    )  # fmt: skip
    php_code = f"""<?php
$order = {_php_array(fields, "")};
$idempotencyKey = bin2hex(random_bytes(16)); // one per order: store it with the order
for ($attempt = 0; $attempt < 5; $attempt++) {{
    $ch = curl_init({php(url)});
    curl_setopt_array($ch, [
        CURLOPT_POST => true,
        CURLOPT_POSTFIELDS => http_build_query($order),
        CURLOPT_HTTPHEADER => ['Idempotency-Key: ' . $idempotencyKey],
        CURLOPT_RETURNTRANSFER => true,
        CURLOPT_HEADER => true,
        CURLOPT_TIMEOUT => 30,
    ]);
    $reply = curl_exec($ch);
    if ($reply === false) {{ // placed or not: resending with the same key is safe
        sleep(2 ** $attempt);
        continue;
    }}
    $headers = substr($reply, 0, curl_getinfo($ch, CURLINFO_HEADER_SIZE));
    $body = substr($reply, curl_getinfo($ch, CURLINFO_HEADER_SIZE));
    if (!in_array(curl_getinfo($ch, CURLINFO_RESPONSE_CODE), [409, 429, 503], true)) {{
        break;
    }}
    sleep(preg_match('/^Retry-After: *(\\d+)/mi', $headers, $m) ? (int) $m[1] : 1);
}}
{_PHP_CHECK}"""
    python = f"""import time
import uuid

import requests

order = {_py_dict(fields, "")}
headers = {{"Idempotency-Key": str(uuid.uuid4())}}  # one per order: store it with the order
for attempt in range(5):
    try:
        reply = requests.post({js(url)}, data=order, headers=headers, timeout=30)
    except requests.ConnectionError:  # placed or not: resending with the same key is safe
        time.sleep(2**attempt)
        continue
    if reply.status_code not in (409, 429, 503):
        break
    time.sleep(int(reply.headers.get("Retry-After", "1")))
else:
    raise SystemExit("no answer")
{_PY_CHECK}"""
    node = f"""// Node 18+, as an ES module (order.mjs).
import {{ randomUUID }} from "node:crypto";

const order = {_node_object(fields, "")};
const headers = {{ "Idempotency-Key": randomUUID() }}; // one per order: store it with the order
let reply;
for (let attempt = 0; attempt < 5; attempt++) {{
  try {{
    reply = await fetch({js(url)}, {{ method: "POST", body: new URLSearchParams(order), headers }});
  }} catch {{ // placed or not: resending with the same key is safe
    await new Promise((done) => setTimeout(done, 1000 * 2 ** attempt));
    continue;
  }}
  if (![409, 429, 503].includes(reply.status)) break;
  const wait = Number(reply.headers.get("Retry-After") ?? 1);
  await new Promise((done) => setTimeout(done, 1000 * wait));
}}
if (reply === undefined) throw new Error("no answer");
{_NODE_CHECK}"""
    code = {"curl": curl, "php": php_code, "python": python, "node": node}
    return [Sample(lang, label, code[lang]) for lang, label in REQUEST_LANGUAGES]


# -- signing (sign_version 2) --------------------------------------------------------------------


def signed(url: str, fields: Fields) -> list[Sample]:
    """A request signed in the unambiguous form (sign_version=2, with a timestamp), in each
    language: the same algorithm as docs/samples/sign_v2.*."""
    assigns = "\n".join(
        f"  [{name}]=" + ('"$KEY"' if name == "key" else sh(value)) for name, value in fields
    )
    curl = f"""#!/usr/bin/env bash
# bash 4+, curl, openssl.
set -euo pipefail
KEY={sh(dict(fields)["key"])}

# RFC 3986 percent-encoding, byte by byte (LC_ALL=C: a character is a byte).
pct() {{
  local LC_ALL=C text=$1 out='' c i
  for ((i = 0; i < ${{#text}}; i++)); do
    c=${{text:i:1}}
    case $c in
      [A-Za-z0-9._~-]) out+=$c ;;
      *) printf -v c '%%%02X' "'$c"; out+=$c ;;
    esac
  done
  printf '%s' "$out"
}}

declare -A fields=(
{assigns}
  [sign_version]=2
  [timestamp]="$(date +%s)"
)
# One encoded pair per line, sorted by encoded name, joined by '&'.
canonical=$(
  for name in "${{!fields[@]}}"; do
    printf '%s=%s\\n' "$(pct "$name")" "$(pct "${{fields[$name]}}")"
  done | LC_ALL=C sort -t= -k1,1 | paste -sd'&' -
)
sign=$(printf '%s' "$canonical" | openssl dgst -sha256 -hmac "$KEY" | sed 's/^.* //')

args=()
for name in "${{!fields[@]}}"; do
  args+=(--data-urlencode "$name=${{fields[$name]}}")
done
curl -sS --fail-with-body {sh(url)} "${{args[@]}}" --data-urlencode "sign=$sign"
echo
"""
    php_code = f"""<?php
function canonical_v2(array $fields): string
{{
    $pairs = [];
    foreach ($fields as $name => $value) {{
        if ((string) $name !== 'sign') {{ // rawurlencode is RFC 3986 (urlencode is not)
            $pairs[rawurlencode((string) $name)] = rawurlencode((string) $value);
        }}
    }}
    ksort($pairs, SORT_STRING); // by encoded name, byte order
    $out = [];
    foreach ($pairs as $name => $value) {{
        $out[] = $name . '=' . $value;
    }}
    return implode('&', $out);
}}

$fields = {_php_array(fields, "")};
$fields['sign_version'] = 2;
$fields['timestamp'] = time();
$fields['sign'] = hash_hmac('sha256', canonical_v2($fields), $fields['key']);

$ch = curl_init({php(url)});
curl_setopt_array($ch, [
    CURLOPT_POST => true,
    CURLOPT_POSTFIELDS => http_build_query($fields),
    CURLOPT_RETURNTRANSFER => true,
    CURLOPT_TIMEOUT => 30,
]);
$body = curl_exec($ch);
{_PHP_CHECK}"""
    python = f"""import hashlib
import hmac
import time
from urllib.parse import quote

import requests


def canonical_v2(fields):
    # quote(safe="") leaves exactly RFC 3986's unreserved characters unencoded.
    pairs = sorted(
        (quote(str(name), safe=""), quote(str(value), safe=""))
        for name, value in fields.items()
        if name != "sign"
    )
    return "&".join(f"{{name}}={{value}}" for name, value in pairs)


fields = {_py_dict(fields, "")}
fields.update(sign_version=2, timestamp=int(time.time()))
message = canonical_v2(fields).encode()
fields["sign"] = hmac.new(fields["key"].encode(), message, hashlib.sha256).hexdigest()

reply = requests.post({js(url)}, data=fields, timeout=30)
{_PY_CHECK}"""
    node = f"""// Node 18+, as an ES module (signed.mjs).
import {{ createHmac }} from "node:crypto";

// encodeURIComponent leaves ! ' ( ) * unencoded; RFC 3986 does not.
const pct = (text) =>
  encodeURIComponent(String(text)).replace(
    /[!'()*]/g,
    (c) => "%" + c.charCodeAt(0).toString(16).toUpperCase(),
  );

function canonicalV2(fields) {{
  return Object.entries(fields)
    .filter(([name]) => name !== "sign")
    .map(([name, value]) => [pct(name), pct(value)])
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)) // ASCII: byte order
    .map(([name, value]) => `${{name}}=${{value}}`)
    .join("&");
}}

const fields = {_node_object(fields, "")};
fields.sign_version = 2;
fields.timestamp = Math.floor(Date.now() / 1000);
fields.sign = createHmac("sha256", fields.key).update(canonicalV2(fields), "utf8").digest("hex");

const reply = await fetch({js(url)}, {{ method: "POST", body: new URLSearchParams(fields) }});
{_NODE_CHECK}"""
    code = {"curl": curl, "php": php_code, "python": python, "node": node}
    return [Sample(lang, label, code[lang]) for lang, label in REQUEST_LANGUAGES]


# -- webhook signatures ------------------------------------------------------------------------

VERIFY = {
    "shell": """#!/usr/bin/env bash
# The raw body on stdin, the X-Panel-Signature header and the secret in the environment.
set -euo pipefail
t=$(printf '%s' "$X_PANEL_SIGNATURE" | tr ',' '\\n' | sed -n 's/^t=//p')
v1=$(printf '%s' "$X_PANEL_SIGNATURE" | tr ',' '\\n' | sed -n 's/^v1=//p')
now=$(date +%s)
[[ $t =~ ^[0-9]+$ ]] && (( 10#$t >= now - 300 && 10#$t <= now + 300 )) || {
  echo "stale or missing timestamp" >&2; exit 1; }
expected=$({ printf '%s.' "$t"; cat; } | openssl dgst -sha256 -hmac "$WEBHOOK_SECRET" \\
  | sed 's/^.* //')
[ "$expected" = "$v1" ] || { echo "invalid signature" >&2; exit 1; }
echo valid
""",
    "php": """<?php
function verify_webhook(string $secret, string $body, string $header, int $tolerance = 300): bool
{
    $parts = [];
    foreach (explode(',', $header) as $item) {
        $pair = explode('=', trim($item), 2);
        if (count($pair) === 2) {
            $parts[$pair[0]] = $pair[1];
        }
    }
    $t = $parts['t'] ?? '';
    if (!ctype_digit($t) || abs(time() - (int) $t) > $tolerance) {
        return false;
    }
    return hash_equals(hash_hmac('sha256', $t . '.' . $body, $secret), $parts['v1'] ?? '');
}

// In a web receiver: $body = file_get_contents('php://input');
// $header = $_SERVER['HTTP_X_PANEL_SIGNATURE'] ?? '';  Here: stdin and the environment.
$body = file_get_contents('php://stdin');
if (!verify_webhook(getenv('WEBHOOK_SECRET'), $body, getenv('X_PANEL_SIGNATURE') ?: '')) {
    fwrite(STDERR, "invalid signature\\n"); // a receiver answers 400 and drops it
    exit(1);
}
echo "valid\\n";
""",
    "python": """import hashlib
import hmac
import os
import sys
import time


def verify_webhook(secret: str, body: bytes, header: str, tolerance: int = 300) -> bool:
    \"\"\"True when `header` (X-Panel-Signature) signs `body` with `secret`, made within
    `tolerance` seconds of now.\"\"\"
    parts = dict(item.strip().split("=", 1) for item in header.split(",") if "=" in item)
    t = parts.get("t", "")
    if not t.isdigit() or abs(time.time() - int(t)) > tolerance:
        return False
    expected = hmac.new(secret.encode(), t.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts.get("v1", ""))


# In a web receiver: the raw body as received (before parsing it) and the header.
# Here: stdin and the environment.
body = sys.stdin.buffer.read()
if not verify_webhook(os.environ["WEBHOOK_SECRET"], body, os.environ["X_PANEL_SIGNATURE"]):
    raise SystemExit("invalid signature")  # a receiver answers 400 and drops it
print("valid")
""",
    "node": """// Node 18+, as an ES module (verify.mjs).
import { createHmac, timingSafeEqual } from "node:crypto";

export function verifyWebhook(secret, body, header, tolerance = 300) {
  const parts = Object.fromEntries(
    header.split(",").map((item) => item.trim().split("=", 2)).filter((p) => p.length === 2),
  );
  const t = parts.t ?? "";
  if (!/^[0-9]+$/.test(t) || Math.abs(Date.now() / 1000 - Number(t)) > tolerance) return false;
  const expected = createHmac("sha256", secret).update(`${t}.`).update(body).digest("hex");
  const given = Buffer.from(parts.v1 ?? "");
  return given.length === expected.length && timingSafeEqual(Buffer.from(expected), given);
}

// In a web receiver: the raw body as received (a Buffer, before parsing it) and the header.
// Here: stdin and the environment.
const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const body = Buffer.concat(chunks);
if (!verifyWebhook(process.env.WEBHOOK_SECRET, body, process.env.X_PANEL_SIGNATURE ?? "")) {
  console.error("invalid signature"); // a receiver answers 400 and drops it
  process.exit(1);
}
console.log("valid");
""",
}


def verify() -> list[Sample]:
    """Checking a delivery's X-Panel-Signature in each language."""
    return [Sample(lang, label, VERIFY[lang]) for lang, label in VERIFY_LANGUAGES]


def python_client(url: str) -> list[Sample]:
    """The same balance call through panelsrv.client (the portal's "SDKs & libraries")."""
    code = f"""import json

from panelsrv.client import Client

with Client({json.dumps(url)}, {json.dumps(KEY)}) as api:
    balance = api.balance()  # typed: Decimal balance, currency
    print(json.dumps({{"balance": str(balance.balance), "currency": balance.currency}}))
"""
    return [Sample("python-client", "Python (panelsrv.client)", code)]
