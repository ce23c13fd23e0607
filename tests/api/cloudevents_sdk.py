"""Sends CloudEvents built by the CloudEvents Python SDK to a live worker.

Used by tests/api/events.rs (`the_cloudevents_sdk_events_run`), never on its
own: `python cloudevents_sdk.py BASE_URL TOKEN RUN` posts four events to
BASE_URL/events, a Cloud Storage finalize event and a Pub/Sub
messagePublished event, each in binary and in structured mode, with RUN in
their ids and sources so that every test run sends events of its own. It
prints one JSON line per event: its name, mode, id and the HTTP status.
"""

import base64
import json
import sys
import urllib.error
import urllib.request

from cloudevents.core.bindings import http
from cloudevents.core.v1.event import CloudEvent


def storage_event(run: str, mode: str) -> CloudEvent:
    name = f"uploads/{run}/{mode}.csv"
    return CloudEvent(
        attributes={
            "id": f"storage-{run}-{mode}",
            "source": "//storage.googleapis.com/projects/_/buckets/acme-uploads",
            "type": "google.cloud.storage.object.v1.finalized",
            "subject": f"objects/{name}",
            "datacontenttype": "application/json",
        },
        data={
            "kind": "storage#object",
            "bucket": "acme-uploads",
            "name": name,
            "generation": "1700000000000000",
            "metageneration": "1",
            "contentType": "text/csv",
            "size": "2048",
            "timeCreated": "2026-11-28T10:00:00.000Z",
            "updated": "2026-11-28T10:00:00.000Z",
        },
    )


def pubsub_event(run: str, mode: str) -> CloudEvent:
    message_id = f"pubsub-{run}-{mode}"
    payload = json.dumps({"sdk": mode}).encode()
    return CloudEvent(
        attributes={
            "id": message_id,
            "source": "//pubsub.googleapis.com/projects/acme-prod/topics/work",
            "type": "google.cloud.pubsub.topic.v1.messagePublished",
            "datacontenttype": "application/json",
        },
        data={
            "message": {
                "data": base64.b64encode(payload).decode(),
                "attributes": {"job": "record"},
                "messageId": message_id,
                "publishTime": "2026-11-28T10:00:00.000Z",
            },
            "subscription": "projects/acme-prod/subscriptions/eventarc-work",
        },
    )


def send(base: str, token: str, message: http.HTTPMessage) -> int:
    request = urllib.request.Request(
        f"{base}/events",
        data=message.body,
        headers={**message.headers, "authorization": f"Bearer {token}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def main() -> None:
    base, token, run = sys.argv[1], sys.argv[2], sys.argv[3]
    for name, build in (("storage", storage_event), ("pubsub", pubsub_event)):
        for mode, encode in (
            ("binary", http.to_binary_event),
            ("structured", http.to_structured_event),
        ):
            event = build(run, mode)
            status = send(base, token, encode(event))
            print(
                json.dumps(
                    {
                        "name": name,
                        "mode": mode,
                        "id": event.get_id(),
                        "status": status,
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
