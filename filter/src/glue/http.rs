//! Per-request context: counts the request under its route key.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::report::{duration_us, is_error};

use super::host;
use super::root::VmState;
use crate::route::Slot;

/// One request.
pub(crate) struct SurgeHttp {
    vm: Rc<RefCell<VmState>>,
    /// Set when this context raised the in-flight gauge, so only it lowers it again.
    started: Option<Slot>,
}

impl SurgeHttp {
    pub(crate) fn new(vm: Rc<RefCell<VmState>>) -> Self {
        Self { vm, started: None }
    }

    fn slot(&self) -> Option<Slot> {
        let mut vm = self.vm.borrow_mut();
        let config = vm.config.clone()?;
        let options = &config.route_key;
        let mut route = host::property(vec!["xds", "route_name"]).unwrap_or_default();
        if route.is_empty() && options.virtual_host_fallback {
            route = host::property(vec!["xds", "virtual_host_name"]).unwrap_or_default();
        }
        let cluster = if options.include_cluster {
            host::property(vec!["xds", "cluster_name"]).unwrap_or_default()
        } else {
            Vec::new()
        };
        Some(vm.routes.slot_for(&route, &cluster, &config))
    }
}

impl Context for SurgeHttp {}

impl HttpContext for SurgeHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(slot) = self.slot() {
            self.vm.borrow_mut().routes.pending(slot).start();
            self.started = Some(slot);
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        // Envoy runs on_log for requests an earlier filter rejected too (the context is then
        // created lazily and headers never ran): key them now.
        let started = self.started.take();
        let Some(slot) = started.or_else(|| self.slot()) else {
            return;
        };
        let code = host::property(vec!["response", "code"]);
        let duration = host::property(vec!["request", "duration"]);
        let mut vm = self.vm.borrow_mut();
        let pending = vm.routes.pending(slot);
        if started.is_some() {
            pending.end();
        }
        pending.complete(is_error(code.as_deref()), duration_us(duration.as_deref()));
        if vm.flush_clock.due(host::now_ms()) {
            vm.routes.flush();
        }
    }
}
