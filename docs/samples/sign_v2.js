// Sign a panelsrv API request in the unambiguous form (sign_version=2) and send it.
//
//     PANEL_URL=https://your-panel.example/api/v2 PANEL_KEY=your-api-key node sign_v2.js
//
// Node 18+ (global fetch), no packages. The signed string: every field but `sign`, name and
// value percent-encoded (RFC 3986: every UTF-8 byte but A-Z a-z 0-9 - . _ ~ as %XX, upper-case
// hex), the pairs sorted by encoded name, `name=value` joined by `&`;
// sign = hex(HMAC-SHA256(api key, signed string)). Values: strings or integers only.
"use strict";

const crypto = require("node:crypto");

// encodeURIComponent leaves ! ' ( ) * unencoded; RFC 3986 does not.
function pct(text) {
  return encodeURIComponent(String(text)).replace(
    /[!'()*]/g,
    (c) => "%" + c.charCodeAt(0).toString(16).toUpperCase(),
  );
}

function canonicalV2(fields) {
  return Object.entries(fields)
    .filter(([name]) => name !== "sign")
    .map(([name, value]) => [pct(name), pct(value)])
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)) // encoded names are ASCII: byte order
    .map(([name, value]) => `${name}=${value}`)
    .join("&");
}

function signedV2(apiKey, fields) {
  const all = { ...fields, sign_version: 2, timestamp: Math.floor(Date.now() / 1000) };
  all.sign = crypto.createHmac("sha256", apiKey).update(canonicalV2(all), "utf8").digest("hex");
  return all;
}

async function main() {
  const apiKey = process.env.PANEL_KEY;
  const url = process.env.PANEL_URL || "https://your-panel.example/api/v2";
  const order = {
    key: apiKey,
    action: "add",
    service: process.env.PANEL_SERVICE || "1234",
    // A link with `&` in its query: the seeds' form cannot sign it unambiguously.
    link: process.env.PANEL_LINK || "https://www.youtube.com/watch?v=abc&t=42&action=x",
    quantity: process.env.PANEL_QUANTITY || "1000",
  };
  const body = new URLSearchParams(signedV2(apiKey, order));
  const response = await fetch(url, { method: "POST", body });
  console.log(await response.text());
  if (!response.ok) process.exitCode = 1;
}

main();
