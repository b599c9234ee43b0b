//! A proxy-wasm filter that only ticks: the idle benchmark's floor for what a tick costs a proxy
//! (the timer, waking the worker thread, entering V8), apart from what surge-filter does in it.
//! Its `pluginConfig` is the tick period in milliseconds (`"100"`); anything else, no tick.

#[cfg(target_arch = "wasm32")]
mod tick {
    use std::time::Duration;

    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::ContextType;

    struct Root;

    impl Context for Root {}

    impl RootContext for Root {
        fn on_configure(&mut self, _size: usize) -> bool {
            let period = self
                .get_plugin_configuration()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .and_then(|text| text.trim().parse::<u64>().ok());
            if let Some(ms) = period {
                self.set_tick_period(Duration::from_millis(ms));
            }
            true
        }

        fn on_tick(&mut self) {}

        fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(Stream))
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    struct Stream;

    impl Context for Stream {}
    impl HttpContext for Stream {}

    proxy_wasm::main! {{
        proxy_wasm::set_root_context(|_context_id| -> Box<dyn RootContext> { Box::new(Root) });
    }}
}
