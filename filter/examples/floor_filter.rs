//! The benchmark's floor: a proxy-wasm HTTP filter that makes only the host calls that exact
//! per-route requests, errors and latency need (the route name, the response status, a clock
//! read at each end) and keeps nothing. It answers "what would any filter that counts per route
//! cost on this ABI?", so surge-filter's own work can be told apart from the price of asking.
//!
//! Its plugin configuration names the calls to make, comma-separated: `route`, `status`,
//! `clock`; empty means all three. `route` alone is the least any filter keyed by route can
//! do: count requests per route, with no errors and no latency.

#[cfg(target_arch = "wasm32")]
mod floor {
    use std::hint::black_box;

    use proxy_wasm::hostcalls;
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, Status};

    #[link(wasm_import_module = "env")]
    unsafe extern "C" {
        fn proxy_get_property(
            path_data: *const u8,
            path_size: usize,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
        ) -> Status;
    }

    /// Which host calls each request makes; set by the root context's `on_configure`.
    #[derive(Clone, Copy, Default)]
    struct Calls {
        route: bool,
        status: bool,
        clock: bool,
    }

    impl Calls {
        const ALL: Calls = Calls {
            route: true,
            status: true,
            clock: true,
        };

        fn parse(config: &str) -> Result<Calls, String> {
            if config.trim().is_empty() {
                return Ok(Calls::ALL);
            }
            let mut calls = Calls::default();
            for name in config.split(',').map(str::trim) {
                match name {
                    "route" => calls.route = true,
                    "status" => calls.status = true,
                    "clock" => calls.clock = true,
                    other => return Err(format!("unknown host call {other:?}")),
                }
            }
            Ok(calls)
        }
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

    /// One per plugin configuration: each hands its own calls to the requests it creates.
    struct FloorRoot {
        calls: Calls,
    }

    impl Context for FloorRoot {}

    impl RootContext for FloorRoot {
        fn on_configure(&mut self, size: usize) -> bool {
            let bytes = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, size)
                .ok()
                .flatten()
                .unwrap_or_default();
            match Calls::parse(&String::from_utf8_lossy(&bytes)) {
                Ok(calls) => {
                    self.calls = calls;
                    true
                }
                Err(error) => {
                    let _ = hostcalls::log(LogLevel::Error, &format!("floor filter: {error}"));
                    false
                }
            }
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }

        fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(Floor { calls: self.calls }))
        }
    }

    struct Floor {
        calls: Calls,
    }

    impl Context for Floor {}

    impl HttpContext for Floor {
        fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
            if self.calls.route {
                black_box(route_name());
            }
            if self.calls.clock {
                now();
            }
            Action::Continue
        }

        fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
            if self.calls.status {
                black_box(
                    hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, ":status").ok(),
                );
            }
            Action::Continue
        }

        fn on_log(&mut self) {
            if self.calls.clock {
                now();
            }
        }
    }

    proxy_wasm::main! {{
        proxy_wasm::set_root_context(|_context_id| -> Box<dyn RootContext> {
            Box::new(FloorRoot { calls: Calls::ALL })
        });
    }}
}
