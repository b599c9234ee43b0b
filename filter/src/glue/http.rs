//! Per-request context: counts the request under its route key.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use surge_filter_core::report::{duration_us, is_error, is_error_status};

use super::host;
use super::root::VmState;
use surge_filter_core::route::Slot;

/// One request.
pub(crate) struct SurgeHttp {
    vm: Rc<RefCell<VmState>>,
    /// Set when this context raised the in-flight gauge, so only it lowers it again; with the
    /// time the request reached the filter.
    started: Option<(Slot, u64)>,
    /// Whether the response is an error, once its headers have passed the filter.
    response_error: Option<bool>,
}

impl SurgeHttp {
    pub(crate) fn new(vm: Rc<RefCell<VmState>>) -> Self {
        Self {
            vm,
            started: None,
            response_error: None,
        }
    }

    fn slot(&self) -> Option<Slot> {
        let mut vm = self.vm.borrow_mut();
        let config = vm.config.clone()?;
        let options = &config.route_key;
        let mut route = host::property_at(host::ROUTE_NAME).unwrap_or_default();
        if route.is_empty() && options.virtual_host_fallback {
            route = host::property_at(host::VIRTUAL_HOST_NAME).unwrap_or_default();
        }
        let cluster = if options.include_cluster {
            host::property_at(host::CLUSTER_NAME).unwrap_or_default()
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
            self.started = Some((slot, host::now_us()));
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // A header lookup is cheaper for the host than the `response.code` property, and local
        // replies (503 no healthy upstream, 504 timeout) pass here too.
        self.response_error = Some(is_error_status(host::response_status().as_deref()));
        Action::Continue
    }

    fn on_log(&mut self) {
        // Envoy runs on_log for requests an earlier filter rejected too (the context is then
        // created lazily and headers never ran): key them now.
        let now_us = host::now_us();
        let (slot, elapsed_us, started) = match self.started.take() {
            // The duration from the clock: the time since the request headers reached this
            // filter, which saves a property read on every request.
            Some((slot, start_us)) => (slot, now_us.saturating_sub(start_us), true),
            None => match self.slot() {
                Some(slot) => {
                    let duration = host::property_at(host::REQUEST_DURATION);
                    (slot, duration_us(duration.as_deref()), false)
                }
                None => return,
            },
        };
        // No response headers seen (reset, or rejected before this filter): ask Envoy.
        let error = match self.response_error {
            Some(error) => error,
            None => is_error(host::property_at(host::RESPONSE_CODE).as_deref()),
        };
        let mut vm = self.vm.borrow_mut();
        let pending = vm.routes.pending(slot);
        if started {
            pending.end();
        }
        pending.complete(error, elapsed_us);
        let now_ms = now_us / 1000;
        if vm.flush_clock.due(now_ms) && vm.routes.flush() {
            let id = vm.vm_id;
            vm.routes.publish(id, now_ms);
        }
    }
}
