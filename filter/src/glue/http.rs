//! Per-request context: counts the request under its route key, and holds it while its
//! destination is cold.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use surge_filter_core::report::{duration_us, is_error, is_error_status};

use super::hold::Decision;
use super::host;
use super::root::VmState;
use surge_filter_core::route::Slot;

/// One request.
pub(crate) struct SurgeHttp {
    vm: Rc<RefCell<VmState>>,
    context_id: u32,
    /// Whether this proxy counts requests: false for a client plugin, whose request path then
    /// makes no host call at all while nothing is cold.
    counts: bool,
    /// Set when this context raised the in-flight gauge, so only it lowers it again; with the
    /// time the request reached the filter.
    started: Option<(Slot, u64)>,
    /// Whether the response is an error, once its headers have passed the filter.
    response_error: Option<bool>,
    /// Set when the request was held; its body and trailers wait while it still is.
    held: bool,
}

impl SurgeHttp {
    pub(crate) fn new(vm: Rc<RefCell<VmState>>, context_id: u32, counts: bool) -> Self {
        Self {
            vm,
            context_id,
            counts,
            started: None,
            response_error: None,
            held: false,
        }
    }

    /// The request's slot, the raw cluster when the key includes it (read anyway: holding
    /// reuses it), and whether nothing is cold (so holding has nothing to check).
    fn key(&self) -> Option<(Slot, Option<Vec<u8>>, bool)> {
        let mut vm = self.vm.borrow_mut();
        let config = vm.config.clone()?;
        let options = &config.route_key;
        let mut route = host::property_at(host::ROUTE_NAME).unwrap_or_default();
        if route.is_empty() && options.virtual_host_fallback {
            route = host::property_at(host::VIRTUAL_HOST_NAME).unwrap_or_default();
        }
        let cluster = if options.include_cluster {
            Some(host::property_at(host::CLUSTER_NAME).unwrap_or_default())
        } else {
            None
        };
        let slot = vm
            .routes
            .slot_for(&route, cluster.as_deref().unwrap_or_default(), &config);
        Some((slot, cluster, vm.hold.idle()))
    }

    /// Holds the request if its destination is cold (reading the cluster unless the key did).
    fn hold(&mut self, cluster: Option<Vec<u8>>) -> Action {
        let cluster =
            cluster.unwrap_or_else(|| host::property_at(host::CLUSTER_NAME).unwrap_or_default());
        let mut vm = self.vm.borrow_mut();
        // Another destination is cold, not this one: on, with no further host call.
        if !vm.hold.is_cold(&cluster) {
            return Action::Continue;
        }
        let Some(config) = vm.config.clone() else {
            return Action::Continue;
        };
        let now_ms = host::now_ms();
        let id = vm.vm_id;
        // Publish this VM's in-flight counts first, so that the activation report counts the
        // request on its route too: admitting the first held request wakes the reporter, which
        // may be another VM that sends at once, on its own thread.
        if vm.routes.flush() {
            vm.routes.publish(id, now_ms);
        }
        match vm
            .hold
            .admit(id, self.context_id, &cluster, &config, now_ms)
        {
            Decision::Pass => Action::Continue,
            Decision::Held => {
                self.held = true;
                Action::Pause
            }
            Decision::Refused => Action::Pause,
        }
    }

    /// Whether the request is still held (the root resumes or answers held requests from its
    /// tick, which this context does not see).
    fn still_held(&mut self) -> bool {
        self.held = self.held && self.vm.borrow().hold.holds(self.context_id);
        self.held
    }
}

impl Context for SurgeHttp {}

impl HttpContext for SurgeHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let mut cluster = None;
        let idle = if self.counts {
            match self.key() {
                Some((slot, key_cluster, idle)) => {
                    self.vm.borrow_mut().routes.pending(slot).start();
                    self.started = Some((slot, host::now_us()));
                    cluster = key_cluster;
                    idle
                }
                None => true,
            }
        } else {
            self.vm.borrow().hold.idle()
        };
        if idle {
            return Action::Continue;
        }
        self.hold(cluster)
    }

    fn on_http_request_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
        // Continuing the body would continue the paused headers with it.
        if self.held && self.still_held() {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        if self.held && self.still_held() {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if !self.counts {
            return Action::Continue;
        }
        // A header lookup is cheaper for the host than the `response.code` property, and local
        // replies (503 no healthy upstream, 504 timeout) pass here too.
        self.response_error = Some(is_error_status(host::response_status().as_deref()));
        Action::Continue
    }

    fn on_log(&mut self) {
        if self.held {
            // Ended while still held: the client went away, or Envoy reset the stream.
            let now_ms = host::now_ms();
            let mut vm = self.vm.borrow_mut();
            let id = vm.vm_id;
            vm.hold.ended(id, self.context_id, now_ms);
        }
        if !self.counts {
            return;
        }
        // Envoy runs on_log for requests an earlier filter rejected too (the context is then
        // created lazily and headers never ran): key them now.
        let now_us = host::now_us();
        let (slot, elapsed_us, started) = match self.started.take() {
            // The duration from the clock: the time since the request headers reached this
            // filter, which saves a property read on every request.
            Some((slot, start_us)) => (slot, now_us.saturating_sub(start_us), true),
            None => match self.key() {
                Some((slot, _, _)) => {
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
