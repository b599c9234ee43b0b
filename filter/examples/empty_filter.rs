//! An empty proxy-wasm HTTP filter: the benchmark's baseline for what loading any Wasm filter on
//! V8 costs, so that surge-filter's own cost can be measured against it.

#[cfg(target_arch = "wasm32")]
mod empty {
    use proxy_wasm::traits::{Context, HttpContext};

    struct Empty;

    impl Context for Empty {}
    impl HttpContext for Empty {}

    proxy_wasm::main! {{
        proxy_wasm::set_http_context(|_context_id, _root_context_id| -> Box<dyn HttpContext> {
            Box::new(Empty)
        });
    }}
}
