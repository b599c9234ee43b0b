//! Writes of the scale: each carries the resourceVersion it was decided on; a 409 is answered
//! at once with a fresh read and decision (a bounded number of times); refused writes and
//! failed reads show in the `AbleToScale` condition and one Warning Event per distinct failure.

use super::*;

/// What a real API server answers a write whose resourceVersion precondition failed.
const CONFLICT_MESSAGE: &str = "Operation cannot be fulfilled on deployments.apps \"api\": the \
     object has been modified; please apply your changes to the latest version and try again";

fn conflict() -> Value {
    api_status(409, "Conflict", CONFLICT_MESSAGE)
}

/// What a real API server answers when the scaler's Role lacks `verb` on `deployments/scale`.
fn forbidden_message(verb: &str) -> String {
    format!(
        "deployments.apps \"api\" is forbidden: User \
         \"system:serviceaccount:surge-system:surge-scaler\" cannot {verb} resource \
         \"deployments/scale\" in API group \"apps\" in the namespace \"web\""
    )
}

fn forbidden(verb: &str) -> Value {
    api_status(403, "Forbidden", &forbidden_message(verb))
}

#[tokio::test]
async fn a_409_re_reads_the_scale_at_once_and_writes_with_the_fresh_resource_version() {
    let (mut target, handle, ctx) = setup(Duration::from_secs(2));
    surge(&ctx, 800);
    let mut script = no_conflicts();
    script.extend([
        expect("GET", SCALE, 200, scale_at(1, "7")),
        // Someone set 3 after the read: the write decided on 1 is refused...
        expect("PATCH", PATCH_SCALE, 409, conflict()),
        // ...and, in the same step, the scale is read again and the decision made again.
        expect("GET", SCALE, 200, scale_at(3, "9")),
        expect("PATCH", PATCH_SCALE, 200, scale_at(8, "10")),
        expect("POST", EVENTS, 201, Value::Null),
        expect(
            "PATCH",
            STATUS,
            200,
            serde_json::to_value(scaler()).unwrap(),
        ),
    ]);
    let server = tokio::spawn(serve(handle, script));
    target.step().await;
    let seen = server.await.unwrap();
    assert_eq!(seen[3].body, scale_patch_at(8, "7"));
    assert_eq!(seen[5].body, scale_patch_at(8, "9"));
    assert_eq!(seen[6].body["reason"], "SuccessfulRescale");
    let status = &seen[7].body;
    assert_eq!(status["status"]["currentReplicas"], 8);
    // A conflict the re-read resolved is not a failure.
    assert_eq!(
        condition(status, "AbleToScale")["reason"],
        "SucceededRescale"
    );
    assert!(
        ctx.metrics
            .encode()
            .contains("surge_kube_api_errors_total{operation=\"patch_scale\",code=\"409\"} 1")
    );
}

#[tokio::test]
async fn the_next_write_carries_the_resource_version_of_the_last_reply_without_a_read() {
    let (mut target, handle, ctx) = setup(Duration::from_secs(2));
    surge(&ctx, 800);
    let mut script = no_conflicts();
    script.extend([
        expect("GET", SCALE, 200, scale_at(1, "7")),
        expect("PATCH", PATCH_SCALE, 200, scale_at(8, "8")),
        expect("POST", EVENTS, 201, Value::Null),
        expect(
            "PATCH",
            STATUS,
            200,
            serde_json::to_value(scaler()).unwrap(),
        ),
        // Second step, a second later and 1000 more requests: no GET before the write.
        expect("PATCH", PATCH_SCALE, 200, scale_at(10, "9")),
        // The second SuccessfulRescale of the object extends the first Event's series.
        expect("PATCH", EVENT_SERIES, 200, Value::Null),
        expect(
            "PATCH",
            STATUS,
            200,
            serde_json::to_value(scaler()).unwrap(),
        ),
    ]);
    let server = tokio::spawn(serve(handle, script));
    target.step().await;
    // A later millisecond: the first decision is not within the (zero) scale-up window.
    tokio::time::sleep(Duration::from_millis(5)).await;
    ctx.hub
        .ingest(&sidecar_report(62, 1390 + 1000, true), ctx.clock.now());
    target.step().await;
    let seen = server.await.unwrap();
    assert_eq!(seen[3].body, scale_patch_at(8, "7"));
    assert_eq!(seen[6].body, scale_patch_at(10, "8"));
}

#[tokio::test]
async fn after_a_409_the_decision_is_made_on_the_fresh_replicas_not_the_stale_ones() {
    let (mut target, handle, ctx) = setup(Duration::from_secs(2));
    surge(&ctx, 800);
    let mut script = no_conflicts();
    script.extend([
        expect("GET", SCALE, 200, scale_at(1, "7")),
        expect("PATCH", PATCH_SCALE, 409, conflict()),
        // An operator ran `kubectl scale --replicas=10` meanwhile. 800 rps asks for 8, but a
        // scale-down is not due (a new loop holds in panic; outside it the scale-down
        // stabilization would): 10 stays, so nothing is written, least of all the 8 decided
        // on the stale 1.
        expect("GET", SCALE, 200, scale_at(10, "12")),
        expect(
            "PATCH",
            STATUS,
            200,
            serde_json::to_value(scaler()).unwrap(),
        ),
    ]);
    let server = tokio::spawn(serve(handle, script));
    target.step().await;
    let seen = server.await.unwrap();
    assert_eq!(seen[3].body, scale_patch_at(8, "7"));
    let status = &seen[5].body["status"];
    assert_eq!(
        (
            status["currentReplicas"].as_i64(),
            status["desiredReplicas"].as_i64()
        ),
        (Some(10), Some(10))
    );
    assert_eq!(
        condition(&seen[5].body, "AbleToScale")["reason"],
        "SucceededGetScale"
    );
    assert_eq!(target.scale.as_ref().map(|s| s.replicas), Some(10));
}

#[tokio::test]
async fn repeated_conflicts_stop_after_three_immediate_retries_and_say_so() {
    let (mut target, handle, ctx) = setup(Duration::from_secs(2));
    surge(&ctx, 800);
    let mut script = no_conflicts();
    script.extend([
        expect("GET", SCALE, 200, scale_at(1, "7")),
        expect("PATCH", PATCH_SCALE, 409, conflict()),
        expect("GET", SCALE, 200, scale_at(1, "8")),
        expect("PATCH", PATCH_SCALE, 409, conflict()),
        expect("GET", SCALE, 200, scale_at(1, "9")),
        expect("PATCH", PATCH_SCALE, 409, conflict()),
        // Three in a row: no fourth attempt in this step, a Warning and the condition instead.
        expect("POST", EVENTS, 201, Value::Null),
        expect(
            "PATCH",
            STATUS,
            200,
            serde_json::to_value(scaler()).unwrap(),
        ),
        // The next wake-up starts with a fresh read: the other writer set 8, which is what
        // Surge wants too. No write, and the contention is over.
        expect("GET", SCALE, 200, scale_at(8, "14")),
        expect(
            "PATCH",
            STATUS,
            200,
            serde_json::to_value(scaler()).unwrap(),
        ),
    ]);
    let server = tokio::spawn(serve(handle, script));
    // The surge report's own wake-up, which the run loop would take for this step.
    tokio::time::timeout(Duration::from_millis(50), target.wake.surge.notified())
        .await
        .expect("the surge report wakes the loop");
    target.step().await;
    // No wake-up left pending: the loop waits for its next report or tick, then starts over
    // with a fresh read.
    assert!(
        tokio::time::timeout(Duration::from_millis(50), target.wake.surge.notified())
            .await
            .is_err()
    );
    assert!(target.scale.is_none());
    assert!(
        ctx.metrics
            .encode()
            .contains("surge_kube_api_errors_total{operation=\"patch_scale\",code=\"409\"} 3")
    );
    target.step().await;
    let seen = server.await.unwrap();
    let versions: Vec<&Value> = [3, 5, 7]
        .iter()
        .map(|&i| &seen[i].body["metadata"]["resourceVersion"])
        .collect();
    assert_eq!(versions, ["7", "8", "9"]);
    let event = &seen[8].body;
    assert_eq!(
        (event["type"].as_str(), event["reason"].as_str()),
        (Some("Warning"), Some("FailedRescale"))
    );
    let note = event["note"].as_str().unwrap();
    assert!(note.starts_with("New size: 8; reason: "), "{note}");
    assert!(note.contains(CONFLICT_MESSAGE), "{note}");
    let able = condition(&seen[9].body, "AbleToScale");
    assert_eq!(
        (able["status"].as_str(), able["reason"].as_str()),
        (Some("False"), Some("FailedUpdateScale"))
    );
    assert!(
        able["message"]
            .as_str()
            .unwrap()
            .contains("3 times in a row"),
        "{able}"
    );
    let able = condition(&seen[11].body, "AbleToScale");
    assert_eq!(
        (able["status"].as_str(), able["reason"].as_str()),
        (Some("True"), Some("SucceededGetScale"))
    );
}

#[tokio::test]
async fn server_errors_and_throttling_are_counted_and_retried_with_a_fresh_read() {
    for code in [500u16, 429] {
        let (mut target, handle, ctx) = setup(Duration::from_secs(2));
        surge(&ctx, 500);
        let mut script = no_conflicts();
        script.extend([
            expect("GET", SCALE, 200, scale_at(2, "7")),
            expect("PATCH", PATCH_SCALE, code, status(code, "Failed")),
            expect("POST", EVENTS, 201, Value::Null),
            expect(
                "PATCH",
                STATUS,
                200,
                serde_json::to_value(scaler()).unwrap(),
            ),
            expect("GET", SCALE, 200, scale_at(2, "8")),
            expect("PATCH", PATCH_SCALE, 200, scale_at(5, "9")),
            expect("POST", EVENTS, 201, Value::Null),
            expect(
                "PATCH",
                STATUS,
                200,
                serde_json::to_value(scaler()).unwrap(),
            ),
        ]);
        let server = tokio::spawn(serve(handle, script));
        target.step().await;
        target.step().await;
        let seen = server.await.unwrap();
        assert_eq!(seen[4].body["reason"], "FailedRescale", "after {code}");
        assert_eq!(
            condition(&seen[5].body, "AbleToScale")["reason"],
            "FailedUpdateScale",
            "after {code}"
        );
        assert_eq!(seen[7].body, scale_patch_at(5, "8"), "after {code}");
        assert_eq!(seen[8].body["reason"], "SuccessfulRescale", "after {code}");
        assert_eq!(
            condition(&seen[9].body, "AbleToScale")["reason"],
            "SucceededRescale",
            "after {code}"
        );
        let expected =
            format!("surge_kube_api_errors_total{{operation=\"patch_scale\",code=\"{code}\"}} 1");
        assert!(ctx.metrics.encode().contains(&expected), "after {code}");
    }
}

#[tokio::test]
async fn a_forbidden_scale_write_is_shown_once_and_cleared_by_the_next_write_that_lands() {
    let (mut target, handle, ctx) = setup(Duration::from_secs(2));
    surge(&ctx, 800);
    let mut script = no_conflicts();
    script.extend([
        expect("GET", SCALE, 200, scale_at(1, "7")),
        expect("PATCH", PATCH_SCALE, 403, forbidden("patch")),
        expect("POST", EVENTS, 201, Value::Null),
        expect(
            "PATCH",
            STATUS,
            200,
            serde_json::to_value(scaler()).unwrap(),
        ),
        // The retry at the next wake-up fails the same way: no second Event, and the status
        // (unchanged) is not rewritten.
        expect("GET", SCALE, 200, scale_at(1, "7")),
        expect("PATCH", PATCH_SCALE, 403, forbidden("patch")),
        // The Role is fixed: the write lands and the condition clears.
        expect("GET", SCALE, 200, scale_at(1, "7")),
        expect("PATCH", PATCH_SCALE, 200, scale_at(8, "8")),
        expect("POST", EVENTS, 201, Value::Null),
        expect(
            "PATCH",
            STATUS,
            200,
            serde_json::to_value(scaler()).unwrap(),
        ),
    ]);
    let server = tokio::spawn(serve(handle, script));
    for _ in 0..3 {
        target.step().await;
    }
    let seen = server.await.unwrap();
    let event = &seen[4].body;
    assert_eq!(
        (event["type"].as_str(), event["reason"].as_str()),
        (Some("Warning"), Some("FailedRescale"))
    );
    let note = event["note"].as_str().unwrap();
    assert!(note.starts_with("New size: 8; reason: rps 800.0"), "{note}");
    assert!(
        note.ends_with(&format!("; error: {}", forbidden_message("patch"))),
        "{note}"
    );
    let failed = condition(&seen[5].body, "AbleToScale");
    assert_eq!(
        (failed["status"].as_str(), failed["reason"].as_str()),
        (Some("False"), Some("FailedUpdateScale"))
    );
    assert_eq!(
        failed["message"].as_str().unwrap(),
        format!(
            "unable to update the target's scale: {}",
            forbidden_message("patch")
        )
    );
    // The missing permission is the scaler's problem, not the target's: Ready stays True.
    assert_eq!(condition(&seen[5].body, "Ready")["status"], "True");
    assert_eq!(seen[9].body, scale_patch_at(8, "7"));
    assert_eq!(seen[10].body["reason"], "SuccessfulRescale");
    let cleared = condition(&seen[11].body, "AbleToScale");
    assert_eq!(
        (cleared["status"].as_str(), cleared["reason"].as_str()),
        (Some("True"), Some("SucceededRescale"))
    );
    assert_eq!(cleared["message"], "the target's scale was updated to 8");
    assert!(
        ctx.metrics
            .encode()
            .contains("surge_kube_api_errors_total{operation=\"patch_scale\",code=\"403\"} 2")
    );
}

#[tokio::test]
async fn a_failed_read_of_the_scale_is_shown_once_as_failed_get_scale() {
    let (mut target, handle, ctx) = setup(Duration::from_secs(2));
    surge(&ctx, 800);
    let mut script = no_conflicts();
    script.extend([
        expect("GET", SCALE, 403, forbidden("get")),
        expect("POST", EVENTS, 201, Value::Null),
        expect(
            "PATCH",
            STATUS,
            200,
            serde_json::to_value(scaler()).unwrap(),
        ),
        // Again at the next wake-up: no second Event, no status rewrite, no write.
        expect("GET", SCALE, 403, forbidden("get")),
        // Readable again: the decision goes on and the condition clears.
        expect("GET", SCALE, 200, scale_at(1, "7")),
        expect("PATCH", PATCH_SCALE, 200, scale_at(8, "8")),
        expect("POST", EVENTS, 201, Value::Null),
        expect(
            "PATCH",
            STATUS,
            200,
            serde_json::to_value(scaler()).unwrap(),
        ),
    ]);
    let server = tokio::spawn(serve(handle, script));
    for _ in 0..3 {
        target.step().await;
    }
    let seen = server.await.unwrap();
    let event = &seen[3].body;
    assert_eq!(
        (event["type"].as_str(), event["reason"].as_str()),
        (Some("Warning"), Some("FailedGetScale"))
    );
    assert_eq!(event["note"].as_str().unwrap(), forbidden_message("get"));
    let failed = condition(&seen[4].body, "AbleToScale");
    assert_eq!(
        (failed["status"].as_str(), failed["reason"].as_str()),
        (Some("False"), Some("FailedGetScale"))
    );
    assert_eq!(
        failed["message"].as_str().unwrap(),
        format!(
            "unable to get the target's current scale: {}",
            forbidden_message("get")
        )
    );
    assert_eq!(seen[7].body, scale_patch_at(8, "7"));
    assert_eq!(
        condition(&seen[9].body, "AbleToScale")["reason"],
        "SucceededRescale"
    );
}

#[tokio::test]
async fn a_missing_target_is_not_found_and_failed_get_scale() {
    let (mut target, handle, ctx) = setup(Duration::from_secs(2));
    surge(&ctx, 800);
    let mut script = no_conflicts();
    script.extend([
        expect(
            "GET",
            SCALE,
            404,
            api_status(404, "NotFound", "deployments.apps \"api\" not found"),
        ),
        expect("POST", EVENTS, 201, Value::Null),
        expect(
            "PATCH",
            STATUS,
            200,
            serde_json::to_value(scaler()).unwrap(),
        ),
    ]);
    let server = tokio::spawn(serve(handle, script));
    target.step().await;
    let seen = server.await.unwrap();
    assert_eq!(seen[3].body["reason"], "FailedGetScale");
    assert_eq!(seen[3].body["note"], "deployments.apps \"api\" not found");
    let ready = condition(&seen[4].body, "Ready");
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("False"), Some("TargetNotFound"))
    );
    assert_eq!(
        condition(&seen[4].body, "AbleToScale")["reason"],
        "FailedGetScale"
    );
}

#[tokio::test]
async fn a_hanging_api_server_times_out_and_the_loop_carries_on() {
    let (mut target, handle, ctx) = setup(Duration::from_millis(200));
    surge(&ctx, 800);
    let mut script = no_conflicts();
    script.extend([
        expect("GET", SCALE, 200, scale(1)),
        expect("PATCH", PATCH_SCALE, 0, Value::Null),
        expect("POST", EVENTS, 201, Value::Null),
        expect(
            "PATCH",
            STATUS,
            200,
            serde_json::to_value(scaler()).unwrap(),
        ),
    ]);
    let server = tokio::spawn(serve(handle, script));
    let started = Instant::now();
    target.step().await;
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_millis(1500),
        "step took {elapsed:?}"
    );
    let seen = server.await.unwrap();
    assert_eq!(seen[4].body["reason"], "FailedRescale");
    let note = seen[4].body["note"].as_str().unwrap();
    assert!(
        note.ends_with("error: no answer from the API server within 200ms"),
        "{note}"
    );
    assert!(
        ctx.metrics
            .encode()
            .contains("surge_kube_api_errors_total{operation=\"patch_scale\",code=\"timeout\"} 1")
    );
}

#[tokio::test]
async fn a_scale_without_a_resource_version_is_written_without_a_precondition() {
    // No API server leaves it out; if one did, Surge would still scale, as before.
    let (mut target, handle, ctx) = setup(Duration::from_secs(2));
    surge(&ctx, 800);
    let mut unversioned = scale(1);
    unversioned["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    let mut reply = scale(8);
    reply["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    let mut script = no_conflicts();
    script.extend([
        expect("GET", SCALE, 200, unversioned),
        expect("PATCH", PATCH_SCALE, 200, reply),
        expect("POST", EVENTS, 201, Value::Null),
        expect(
            "PATCH",
            STATUS,
            200,
            serde_json::to_value(scaler()).unwrap(),
        ),
    ]);
    let server = tokio::spawn(serve(handle, script));
    target.step().await;
    let seen = server.await.unwrap();
    assert_eq!(seen[3].body, serde_json::json!({"spec": {"replicas": 8}}));
    // A reply without one is no precondition for the next write: the next step reads first.
    assert!(target.scale_read_at.is_none());
}
