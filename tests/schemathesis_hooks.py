"""Schemathesis hooks of tests/schemathesis.toml.

`POST /jobs/sleep` may wait up to an hour (its schema's maximum); the run's
job timeout is a second or two, so a long wait would be answered 504, the
job timeout doing its documented work, which `not_a_server_error` counts as a
failure. Waits are kept short so every answer is the job's own; values past
the maximum are left as they are (the job refuses them: 422).
"""

import schemathesis

LONGEST_WAIT_MS = 50


@schemathesis.hook
def before_call(context, case, kwargs):
    if case.operation.path != "/jobs/sleep" or not isinstance(case.body, dict):
        return
    millis = case.body.get("millis")
    if isinstance(millis, int) and not isinstance(millis, bool) and LONGEST_WAIT_MS < millis <= 3_600_000:
        case.body["millis"] = LONGEST_WAIT_MS
