//! The benchmark's floor: a proxy-wasm HTTP filter that makes only the host calls that exact
//! per-route requests, errors and latency need (the route name, the response status, a clock
//! read at each end) and keeps nothing. It answers "what would any filter that counts per route
//! cost on this ABI?", so surge-filter's own work can be told apart from the price of asking.

#[cfg(target_arch = "wasm32")]
mod floor {
    use std::hint::black_box;

    use proxy_wasm::hostcalls;
    use proxy_wasm::traits::{Context, HttpContext};
    use proxy_wasm::types::{Action, MapType, Status};

    #[link(wasm_import_module = "env")]
    unsafe extern "C" {
        fn proxy_get_property(
            path_data: *const u8,
            path_size: usize,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
        ) -> Status;
    }

    /// `xds.route_name`, read with a pre-encoded path as surge-filter reads it.
    fn route_name() -> Option<Vec<u8>> {
        const PATH: &[u8] = b"xds\0route_name";
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut size: usize = 0;
        // SAFETY: as in surge-filter's `host::property_at`: on `Ok` the host filled `data`
        // with `size` bytes it allocated through this module's `proxy_on_memory_allocate`.
        unsafe {
            match proxy_get_property(PATH.as_ptr(), PATH.len(), &mut data, &mut size) {
                Status::Ok if !data.is_null() => Some(Vec::from_raw_parts(data, size, size)),
                _ => None,
            }
        }
    }

    fn now() {
        black_box(hostcalls::get_current_time().ok());
    }

    struct Floor;

    impl Context for Floor {}

    impl HttpContext for Floor {
        fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
            black_box(route_name());
            now();
            Action::Continue
        }

        fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
            black_box(hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, ":status").ok());
            Action::Continue
        }

        fn on_log(&mut self) {
            now();
        }
    }

    proxy_wasm::main! {{
        proxy_wasm::set_http_context(|_context_id, _root_context_id| -> Box<dyn HttpContext> {
            Box::new(Floor)
        });
    }}
}
