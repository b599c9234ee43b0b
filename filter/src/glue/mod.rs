//! The thin layer that imports `proxy_wasm`: host calls in, pure decisions out.
//!
//! Only built for `wasm32`; everything it calls into is tested natively.

mod hold;
mod host;
mod http;
mod root;
mod routes;

use proxy_wasm::traits::RootContext;

/// Entry point: one [`root::SurgeRoot`] per VM, which creates a [`http::SurgeHttp`] per request.
pub(crate) fn start() {
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(root::SurgeRoot::new(context_id))
    });
}
