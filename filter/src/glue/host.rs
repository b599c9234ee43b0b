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
