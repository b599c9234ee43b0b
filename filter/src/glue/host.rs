//! Host calls wrapped so that no failure can panic: the SDK's context helpers unwrap, so the
//! filter only uses `proxy_wasm::hostcalls` and turns errors into `None`/`false`.

use proxy_wasm::hostcalls;
use proxy_wasm::types::{LogLevel, MetricType, Status};

/// A property's raw value; `None` when absent or unreadable.
pub(crate) fn property(path: Vec<&str>) -> Option<Vec<u8>> {
    hostcalls::get_property(path).ok().flatten()
}

/// A property path in the ABI's encoding (segments joined by NUL), written out once so that a
/// read on the request path allocates nothing for the path: the SDK's `get_property` builds a
/// `Vec` of segments and another of bytes per call, which measured as much as the host call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PropertyPath(&'static [u8]);

/// `xds.route_name`.
pub(crate) const ROUTE_NAME: PropertyPath = PropertyPath(b"xds\0route_name");
/// `xds.virtual_host_name`.
pub(crate) const VIRTUAL_HOST_NAME: PropertyPath = PropertyPath(b"xds\0virtual_host_name");
/// `xds.cluster_name`.
pub(crate) const CLUSTER_NAME: PropertyPath = PropertyPath(b"xds\0cluster_name");
/// `request.duration`.
pub(crate) const REQUEST_DURATION: PropertyPath = PropertyPath(b"request\0duration");
/// `response.code`.
pub(crate) const RESPONSE_CODE: PropertyPath = PropertyPath(b"response\0code");

#[link(wasm_import_module = "env")]
unsafe extern "C" {
    // The ABI's import, declared as the SDK declares it.
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> Status;
}

/// A property's raw value by pre-encoded path; `None` when absent or unreadable.
pub(crate) fn property_at(path: PropertyPath) -> Option<Vec<u8>> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the path is a live static slice; on `Ok` the host has filled `data` with a
    // buffer of `size` bytes that it obtained from this module's `proxy_on_memory_allocate`
    // (the SDK's, which leaks a `Vec<u8>` of exactly that capacity), so taking it back as a
    // `Vec` of that length and capacity frees it the way it was allocated.
    unsafe {
        match proxy_get_property(path.0.as_ptr(), path.0.len(), &mut data, &mut size) {
            Status::Ok if !data.is_null() => Some(Vec::from_raw_parts(data, size, size)),
            _ => None,
        }
    }
}

#[link(wasm_import_module = "env")]
unsafe extern "C" {
    // The ABI's imports, declared as the SDK declares them; called directly because the SDK's
    // wrappers panic on any status but the expected ones, and a held request's stream may be
    // gone by the time the filter answers it.
    fn proxy_set_effective_context(context_id: u32) -> Status;
    fn proxy_continue_stream(stream_type: u32) -> Status;
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> Status;
}

#[link(wasm_import_module = "env")]
unsafe extern "C" {
    // Shared queues, declared as the SDK declares them and called directly for the same
    // reason: the SDK's wrappers panic on statuses a queue of a VM that is gone can return.
    fn proxy_register_shared_queue(
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> Status;
    fn proxy_resolve_shared_queue(
        vm_id_data: *const u8,
        vm_id_size: usize,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> Status;
    fn proxy_enqueue_shared_queue(
        queue_id: u32,
        value_data: *const u8,
        value_size: usize,
    ) -> Status;
    fn proxy_dequeue_shared_queue(
        queue_id: u32,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> Status;
}

/// Registers a shared queue of this root context (its `on_queue_ready` runs when another VM
/// enqueues); `None` when the host refused.
pub(crate) fn register_queue(name: &str) -> Option<u32> {
    let mut id = 0u32;
    // SAFETY: the name is a live buffer of its length; `id` is a live u32 for the host to fill.
    let status = unsafe { proxy_register_shared_queue(name.as_ptr(), name.len(), &mut id) };
    matches!(status, Status::Ok).then_some(id)
}

/// Wakes the root context that registered queue `name` (in VM configuration `vm_id`): enqueues
/// one byte; false when no such queue exists (its VM is gone) or the host refused.
pub(crate) fn wake(vm_id: &str, name: &str) -> bool {
    let mut id = 0u32;
    // SAFETY: both strings are live buffers of their lengths; `id` is a live u32.
    let status = unsafe {
        proxy_resolve_shared_queue(
            vm_id.as_ptr(),
            vm_id.len(),
            name.as_ptr(),
            name.len(),
            &mut id,
        )
    };
    if !matches!(status, Status::Ok) {
        return false;
    }
    let byte = [b'w'];
    // SAFETY: a live one-byte buffer.
    matches!(
        unsafe { proxy_enqueue_shared_queue(id, byte.as_ptr(), byte.len()) },
        Status::Ok
    )
}

/// Empties queue `id` (the wake-ups are all alike; a bounded number is read).
pub(crate) fn drain_queue(id: u32) {
    for _ in 0..64 {
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut size: usize = 0;
        // SAFETY: on `Ok` with a non-null pointer the host filled `data` with a buffer of `size`
        // bytes from this module's allocator, taken back and freed as the property reads do.
        let status = unsafe { proxy_dequeue_shared_queue(id, &mut data, &mut size) };
        match status {
            Status::Ok if !data.is_null() => {
                drop(unsafe { Vec::from_raw_parts(data, size, size) });
            }
            _ => return,
        }
    }
}

/// Makes `context_id` the context later host calls act on (until the callback returns, or the
/// next call of this); false when the host knows no such context (the request ended).
pub(crate) fn set_effective_context(context_id: u32) -> bool {
    // SAFETY: a plain ABI call with an integer argument.
    matches!(
        unsafe { proxy_set_effective_context(context_id) },
        Status::Ok
    )
}

/// Resumes the effective context's paused request (Envoy continues it once the current
/// callback returns); false when the host refused.
pub(crate) fn resume_request() -> bool {
    // SAFETY: a plain ABI call; 0 is the ABI's `HttpRequest` stream.
    matches!(unsafe { proxy_continue_stream(0) }, Status::Ok)
}

/// Answers the effective context's request with a local `503` and `retry-after`, with a short
/// plain-text body saying why (Envoy sends it once the current callback returns); false when
/// the host refused (the request ended, or it was answered already).
pub(crate) fn send_unavailable(retry_after_s: u64, body: &str) -> bool {
    // The ABI's header map, written out: two pairs, their lengths, then the NUL-terminated
    // names and values.
    let retry_after = retry_after_s.to_string();
    let mut headers = Vec::with_capacity(80);
    for n in [2, 11, retry_after.len(), 12, 10] {
        headers.extend_from_slice(&u32::try_from(n).unwrap_or(0).to_le_bytes());
    }
    headers.extend_from_slice(b"retry-after\0");
    headers.extend_from_slice(retry_after.as_bytes());
    headers.extend_from_slice(b"\0content-type\0text/plain\0");
    const DETAILS: &str = "surge_destination_cold";
    // SAFETY: every pointer is to a live buffer of the given length for the whole call.
    let status = unsafe {
        proxy_send_local_response(
            503,
            DETAILS.as_ptr(),
            DETAILS.len(),
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    };
    matches!(status, Status::Ok)
}

/// The current call response's body, when it has at most `max` bytes.
pub(crate) fn call_response_body(size: usize, max: usize) -> Option<Vec<u8>> {
    if size > max {
        return None;
    }
    hostcalls::get_buffer(proxy_wasm::types::BufferType::HttpCallResponseBody, 0, size)
        .ok()
        .flatten()
}

/// Sets a gauge to `value`.
pub(crate) fn set(metric: Option<u32>, value: u64) {
    if let Some(id) = metric {
        let _ = hostcalls::record_metric(id, value);
    }
}

/// Milliseconds since the Unix epoch on the proxy's clock (0 if unavailable).
pub(crate) fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Microseconds since the Unix epoch on the proxy's clock (0 if unavailable). A clock read is a
/// much cheaper host call than a property read, which makes the host allocate in the VM.
pub(crate) fn now_us() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// A shared-data value and its CAS version.
pub(crate) fn shared_get(key: &str) -> (Option<Vec<u8>>, Option<u32>) {
    hostcalls::get_shared_data(key).unwrap_or((None, None))
}

/// Writes shared data under CAS; false on a CAS mismatch (another VM wrote first).
pub(crate) fn shared_set(key: &str, value: &[u8], cas: Option<u32>) -> bool {
    hostcalls::set_shared_data(key, Some(value), cas).is_ok()
}

/// Stores `value` under `key` unless some value is there already; returns what is stored.
pub(crate) fn shared_init(key: &str, value: &[u8]) -> Option<Vec<u8>> {
    let (current, _) = shared_get(key);
    if let Some(current) = current.filter(|v| !v.is_empty()) {
        return Some(current);
    }
    shared_set(key, value, None);
    shared_get(key).0
}

/// Defines (or finds) a process-wide counter.
pub(crate) fn counter(name: &str) -> Option<u32> {
    hostcalls::define_metric(MetricType::Counter, name).ok()
}

/// Defines (or finds) a process-wide gauge.
pub(crate) fn gauge(name: &str) -> Option<u32> {
    hostcalls::define_metric(MetricType::Gauge, name).ok()
}

/// Adds to a metric (counters refuse offsets <= 0, so callers skip those).
pub(crate) fn add(metric: Option<u32>, offset: i64) {
    if let Some(id) = metric
        && offset != 0
    {
        let _ = hostcalls::increment_metric(id, offset);
    }
}

/// A metric's process-wide value.
pub(crate) fn read(metric: Option<u32>) -> u64 {
    metric.map_or(0, |id| hostcalls::get_metric(id).unwrap_or(0))
}

/// Logs at `level`; a failed log call has nowhere to be reported.
pub(crate) fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

/// The plugin configuration bytes.
pub(crate) fn plugin_configuration() -> Vec<u8> {
    hostcalls::get_buffer(
        proxy_wasm::types::BufferType::PluginConfiguration,
        0,
        usize::MAX,
    )
    .ok()
    .flatten()
    .unwrap_or_default()
}

/// `:status` of the current request's response headers.
pub(crate) fn response_status() -> Option<Vec<u8>> {
    hostcalls::get_map_value_bytes(proxy_wasm::types::MapType::HttpResponseHeaders, ":status")
        .ok()
        .flatten()
}

/// `:status` of the current call response.
pub(crate) fn call_response_status() -> Option<String> {
    hostcalls::get_map_value(
        proxy_wasm::types::MapType::HttpCallResponseHeaders,
        ":status",
    )
    .ok()
    .flatten()
}

/// Sends a report; `Err` when Envoy refuses the call (unknown cluster, bad headers).
pub(crate) fn dispatch(
    cluster: &str,
    headers: Vec<(&str, &str)>,
    body: &[u8],
    timeout_ms: u64,
) -> Result<u32, Status> {
    hostcalls::dispatch_http_call(
        cluster,
        headers,
        Some(body),
        Vec::new(),
        std::time::Duration::from_millis(timeout_ms),
    )
}

#[link(wasm_import_module = "wasi_snapshot_preview1")]
unsafe extern "C" {
    // WASI's random source (Envoy implements it), which std also imports to seed its hashers;
    // called directly, it saves the module std's SipHash.
    fn random_get(buf: *mut u8, len: usize) -> u16;
}

/// 64 random bits from the host; the clock's if the host has none (ids stay distinct across
/// VMs that do not start in the same microsecond).
pub(crate) fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: the buffer is live, writable and exactly `len` bytes long.
    let status = unsafe { random_get(bytes.as_mut_ptr(), bytes.len()) };
    if status == 0 {
        u64::from_le_bytes(bytes)
    } else {
        now_us()
    }
}
