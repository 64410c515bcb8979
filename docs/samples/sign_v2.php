<?php
// Sign a panelsrv API request in the unambiguous form (sign_version=2) and send it.
//
//     PANEL_URL=https://your-panel.example/api/v2 PANEL_KEY=your-api-key php sign_v2.php
//
// PHP 7.1+ with the curl extension. The signed string: every field but `sign`, name and value
// percent-encoded (RFC 3986: every UTF-8 byte but A-Z a-z 0-9 - . _ ~ as %XX, upper-case hex),
// the pairs sorted by encoded name, `name=value` joined by `&`;
// sign = hex(HMAC-SHA256(api key, signed string)). Values: strings or integers only.

function canonical_v2(array $fields): string
{
    $pairs = [];
    foreach ($fields as $name => $value) {
        if ((string) $name === 'sign') {
            continue;
        }
        // rawurlencode is RFC 3986 (urlencode is not: it turns a space into "+").
        $pairs[rawurlencode((string) $name)] = rawurlencode((string) $value);
    }
    ksort($pairs, SORT_STRING); // by encoded name, byte order
    $out = [];
    foreach ($pairs as $name => $value) {
        $out[] = $name . '=' . $value;
    }
    return implode('&', $out);
}

function signed_v2(string $apiKey, array $fields): array
{
    $fields['sign_version'] = 2;
    $fields['timestamp'] = time();
    $fields['sign'] = hash_hmac('sha256', canonical_v2($fields), $apiKey);
    return $fields;
}

$apiKey = getenv('PANEL_KEY');
$url = getenv('PANEL_URL') ?: 'https://your-panel.example/api/v2';
$order = [
    'key' => $apiKey,
    'action' => 'add',
    'service' => getenv('PANEL_SERVICE') ?: '1234',
    // A link with `&` in its query: the seeds' form cannot sign it unambiguously.
    'link' => getenv('PANEL_LINK') ?: 'https://www.youtube.com/watch?v=abc&t=42&action=x',
    'quantity' => getenv('PANEL_QUANTITY') ?: '1000',
];
$ch = curl_init($url);
curl_setopt_array($ch, [
    CURLOPT_POST => true,
    CURLOPT_POSTFIELDS => http_build_query(signed_v2($apiKey, $order), '', '&'),
    CURLOPT_RETURNTRANSFER => true,
]);
$body = curl_exec($ch);
if ($body === false) {
    fwrite(STDERR, curl_error($ch) . "\n");
    exit(1);
}
echo $body, "\n";
exit(curl_getinfo($ch, CURLINFO_RESPONSE_CODE) === 200 ? 0 : 1);
