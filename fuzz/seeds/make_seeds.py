#!/usr/bin/env python3
"""Writes the seed corpus in fuzz/seeds/<target>/ (run from anywhere).

The seeds are committed; this script is how they were made, so they can be
made again or extended. JWTs are signed with RS256 by a throwaway RSA key that
openssl generates in a temporary folder (no key is kept or committed; the fuzz
target trusts a key of its own, so these signatures never verify there:
tokens the target accepts come from its tamper and signed-claims modes).

Formats (see the top of each fuzz target):
- push_envelope: the raw body of a wrapped push.
- unwrapped_headers: `arbitrary`'s encoding of `Input { headers, body }`:
  per header a continue byte (odd), the name (enum: u32 LE 0 then a u8 index
  into KNOWN, or u32 LE 0xffffffff then a Vec<u8>), the value (Vec<u8>); an
  even byte ends the list; the body is the rest. A Vec<u8> is each byte
  preceded by a continue byte (odd), then an even byte.
- token_routing: a mode digit (0 raw, 1 tamper, 2 signed claims, 3 impostor)
  and the rest.
"""

import base64
import json
import os
import pathlib
import struct
import subprocess
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent


def write(target, name, data):
    folder = ROOT / target
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (folder / name).write_bytes(data)


def b64(data):
    return base64.b64encode(data).decode()


def compact(value):
    return json.dumps(value, separators=(",", ":"))


# --- push_envelope -----------------------------------------------------------

SUB = "projects/acme-prod/subscriptions/work-push"
TIME = "2026-01-01T00:00:00.123Z"


def envelope(data, attributes, message_id, casing="both", extra=None, envelope_extra=None):
    message = {}
    if data is not None:
        message["data"] = data
    if attributes is not None:
        message["attributes"] = attributes
    if casing in ("both", "camel"):
        message["messageId"] = message_id
        message["publishTime"] = TIME
    if casing in ("both", "snake"):
        message["message_id"] = message_id
        message["publish_time"] = TIME
    message.update(extra or {})
    body = {"message": message, "subscription": SUB}
    body.update(envelope_extra or {})
    return json.dumps(body, indent=None)


def push_envelope():
    t = "push_envelope"
    echo = compact({"message": "hello from a fixture"})
    echo2 = compact({"message": "with extra fields", "order": 42, "tags": ["a", "b"]})
    write(t, "seed-echo-both-casings", envelope(b64(echo.encode()), {"job": "echo"}, "1001"))
    write(t, "seed-echo-camel", envelope(b64(echo2.encode()), {"job": "echo", "tenant": "acme"}, "1002", "camel"))
    write(t, "seed-echo-snake", envelope(b64(echo.encode()), {"job": "echo"}, "1003", "snake"))
    write(t, "seed-sleep-ordering-attempt", envelope(
        b64(compact({"millis": 0}).encode()), {"job": "sleep"}, "1004",
        extra={"orderingKey": "batch-1"}, envelope_extra={"deliveryAttempt": 5}))
    write(t, "seed-webhook-unpadded", envelope(
        b64(compact({"url": "http://127.0.0.1:8080/healthz", "method": "GET"}).encode()).rstrip("="),
        {"job": "webhook"}, "1005"))
    # Poison that is still a well-formed envelope: data that is not JSON.
    write(t, "seed-poison-not-json", envelope("//79", {"job": "echo"}, "1006"))
    write(t, "seed-no-data-no-attributes", envelope(None, None, "1007"))
    write(t, "seed-empty-id-and-null", compact({"message": {"messageId": "", "message_id": "x", "data": None}}))
    write(t, "seed-not-envelope", b"job=echo&data=hi")
    # Regressions: a JSON array was read as the envelope or the message.
    write(t, "seed-regression-array-envelope", '[{"messageId":"1"},null,null]')
    write(t, "seed-regression-array-message", '{"message":["aGk=",{"job":"echo"},"7",null,null,null,null]}')


# --- unwrapped_headers ---------------------------------------------------------

def vec_u8(data):
    if isinstance(data, str):
        data = data.encode()
    return b"".join(b"\x01" + bytes([c]) for c in data) + b"\x00"


def raw_name(name):
    return struct.pack("<I", 0xFFFFFFFF) + vec_u8(name)


def known_name(index):
    return struct.pack("<I", 0) + bytes([index])


def unwrapped(headers, body):
    out = b""
    for name, value in headers:
        out += b"\x01" + (known_name(name) if isinstance(name, int) else raw_name(name)) + vec_u8(value)
    return out + b"\x00" + (body.encode() if isinstance(body, str) else body)


def unwrapped_headers():
    t = "unwrapped_headers"
    bearer = "Bearer eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.eyJpc3MiOiJodHRwczovL2FjY291bnRzLmdvb2dsZS5jb20ifQ.c2ln"
    push = [
        ("authorization", bearer),
        ("content-type", "application/octet-stream"),
        ("user-agent", "APIs-Google; (+https://developers.google.com/webmasters/APIs-Google.html)"),
        ("x-goog-pubsub-message-id", "9876543210"),
        ("x-goog-pubsub-publish-time", TIME),
        ("x-goog-pubsub-subscription-name", SUB),
        ("x-forwarded-for", "203.0.113.7"),
        ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ("job", "echo"),
    ]
    write(t, "seed-pubsub-no-wrapper", unwrapped(push, compact({"message": "hi"})))
    write(t, "seed-ordering-attempt-attributes", unwrapped(push + [
        ("x-goog-pubsub-ordering-key", "batch-1"),
        ("x-goog-pubsub-delivery-attempt", "3"),
        ("tenant", "acme"),
        ("Job", "sleep"),
    ], compact({"millis": 20})))
    # Mixed-case and known names by index (KNOWN[1] = "Authorization",
    # KNOWN[4] = "X-Goog-PubSub-Message-Id", KNOWN[27] = "job").
    write(t, "seed-known-names", unwrapped([
        (1, "Bearer a.b.c"), (4, "42"), (27, "echo"), (27, "twice"), ("cookie", "session=1"),
    ], b"\x00\xff raw bytes"))
    # No message id: parse_push takes the body as a wrapped envelope.
    write(t, "seed-wrapped-fallback", unwrapped(
        [("content-type", "application/json"), ("authorization", bearer)],
        envelope(b64(b'{"message":"hi"}'), {"job": "echo"}, "77")))
    # An empty id header and a non-ASCII value.
    write(t, "seed-empty-id", unwrapped(
        [("x-goog-pubsub-message-id", ""), ("job", b"\xc3\xa9cho")], "{}"))


# --- token_routing --------------------------------------------------------------

AUDIENCE = "https://pushworker.test/pubsub/push"
SERVICE_ACCOUNT = "pusher@acme-prod.iam.gserviceaccount.com"
CLERK_ISSUER = "https://clerk.pushworker.test"
AZP = "https://admin.pushworker.test"
IAT, NBF, EXP = 1767225600, 1767225590, 4102444800  # 2026-01-01, year 2100


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def google_claims(**over):
    claims = {"iss": "https://accounts.google.com", "aud": AUDIENCE, "azp": "112233445566778899000",
              "sub": "112233445566778899000", "email": SERVICE_ACCOUNT, "email_verified": True,
              "iat": IAT, "exp": EXP}
    claims.update(over)
    return claims


def clerk_claims(**over):
    claims = {"iss": CLERK_ISSUER, "sub": "user_2abc", "sid": "sess_2abc", "azp": AZP,
              "iat": IAT, "nbf": NBF, "exp": EXP, "fva": [0, -1]}
    claims.update(over)
    return claims


def token_routing():
    t = "token_routing"
    with tempfile.TemporaryDirectory() as tmp:
        key = os.path.join(tmp, "key.pem")
        subprocess.run(["openssl", "genrsa", "-out", key, "2048"], check=True, capture_output=True)

        def sign(claims, kid="trusted-1"):
            signing_input = (b64url(compact({"alg": "RS256", "kid": kid, "typ": "JWT"}).encode()) + "."
                             + b64url(compact(claims).encode()))
            signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key],
                                       input=signing_input.encode(), check=True, capture_output=True).stdout
            return signing_input + "." + b64url(signature)

        google = sign(google_claims())
        clerk = sign(clerk_claims(v=2, fea="o:jobs", o={"id": "org_1", "slg": "acme", "rol": "admin",
                                                        "per": "trigger", "fpm": "1"}))
        # Mode 0: raw Authorization values and bare tokens.
        write(t, "seed-raw-google", "0Bearer " + google)
        write(t, "seed-raw-clerk", "0bearer  " + clerk + " ")
        write(t, "seed-raw-bare-other-kid", "0" + sign(clerk_claims(), kid="ins_2abc"))
        write(t, "seed-raw-other-issuer", "0Bearer " + sign(google_claims(iss="https://evil.example")))
        write(t, "seed-raw-alg-none", "0Bearer " + b64url(b'{"alg":"none","kid":"trusted-1"}') + "."
              + b64url(compact(google_claims()).encode()) + ".")
        write(t, "seed-raw-basic", "0Basic dXNlcjpwYXNz")
    # Mode 1: valid token N (0 Google, 1 Clerk v2, 2 Clerk v1, 3 Clerk), edits.
    for n in range(4):
        write(t, f"seed-tamper-untouched-{n}", b"1" + bytes([n]))
    flip = b"\x01" + struct.pack("<I", 0) + struct.pack("<H", 40) + b"\x01"  # Flip at 40 by 1
    splice = b"\x01" + struct.pack("<I", 0xFFFFFFFF) + b"\x01\x00"  # Splice part 1 from token 0
    write(t, "seed-tamper-flip", b"1\x01" + flip + b"\x00")
    write(t, "seed-tamper-splice-payload", b"1\x01" + splice + b"\x00")
    # Mode 2: claims signed by the trusted key; mode 3: by an impostor.
    write(t, "seed-claims-google", "2" + compact(google_claims()))
    write(t, "seed-claims-google-other-account", "2" + compact(google_claims(email="x@y.iam.gserviceaccount.com")))
    write(t, "seed-claims-clerk-v2", "2" + compact(clerk_claims(v=2, fea="o:jobs,o:runs", o={
        "id": "org_1", "slg": "acme", "rol": "admin", "per": "trigger,view", "fpm": "3,2"})))
    write(t, "seed-claims-clerk-v1", "2" + compact(clerk_claims(
        org_id="org_1", org_role="org:member", org_permissions=["org:jobs:trigger"])))
    write(t, "seed-claims-clerk-pending", "2" + compact(clerk_claims(sts="pending")))
    write(t, "seed-claims-unknown-issuer", "2" + compact(clerk_claims(iss="https://clerk.other.test")))
    write(t, "seed-impostor-google", "3" + compact(google_claims()))


if __name__ == "__main__":
    push_envelope()
    unwrapped_headers()
    token_routing()
