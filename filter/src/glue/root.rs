//! Per-VM root context: configuration, the reporter election and the reports.
//!
//! Every VM ticks every check period; the one holding the lease reads the process-wide counters,
//! asks the scheduler whether a report is due and sends it. Followers only renew nothing and
//! wait: the lease expires if the reporter stops ticking, and the next VM to tick takes over.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};
use surge_wire::Proxy;

use surge_filter_core::config::Config;
use surge_filter_core::identity;
use surge_filter_core::lease::{
    INSTANCE_KEY, LEASE_KEY, Lease, LeaseStep, ROUTES_KEY, SEQ_KEY, STATS_EPOCH_METRIC, SeqRecord,
};
use surge_filter_core::report::{self, DeliveryLog, Header, Outcome};
use surge_filter_core::surge::Scheduler;
use surge_filter_core::tally::FlushClock;

use super::host;
use super::http::SurgeHttp;
use super::routes::RouteCache;

/// What the root shares with the request contexts of its VM.
#[derive(Debug, Default)]
pub(crate) struct VmState {
    /// This VM's random id (the lease holder's, and the key of its in-flight counts).
    pub(crate) vm_id: u64,
    pub(crate) config: Option<Rc<Config>>,
    pub(crate) routes: RouteCache,
    pub(crate) flush_clock: FlushClock,
}

/// The filter's own counters (process-wide, like the route metrics).
#[derive(Debug, Clone, Copy, Default)]
struct OwnMetrics {
    sent: Option<u32>,
    surge: Option<u32>,
    delivered: Option<u32>,
    failed_dispatch: Option<u32>,
    failed_status: Option<u32>,
    failed_reset: Option<u32>,
    skipped_in_flight: Option<u32>,
}

impl OwnMetrics {
    fn define() -> Self {
        Self {
            sent: host::counter("surge.reports_sent_total"),
            surge: host::counter("surge.reports_surge_total"),
            delivered: host::counter("surge.reports_delivered_total"),
            failed_dispatch: host::counter("surge.report_failures_dispatch_total"),
            failed_status: host::counter("surge.report_failures_status_total"),
            failed_reset: host::counter("surge.report_failures_reset_total"),
            skipped_in_flight: host::counter("surge.reports_skipped_in_flight_total"),
        }
    }

    fn outcome(&self, outcome: Outcome) {
        let metric = match outcome {
            Outcome::Delivered => self.delivered,
            Outcome::DispatchFailed => self.failed_dispatch,
            Outcome::Status(_) => self.failed_status,
            Outcome::Reset => self.failed_reset,
        };
        host::add(metric, 1);
    }
}

/// The report being sent, if any.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    token: u32,
    since_ms: u64,
}

/// Root context of one VM.
pub(crate) struct SurgeRoot {
    vm: Rc<RefCell<VmState>>,
    vm_id: u64,
    proxy: Option<Proxy>,
    metrics: OwnMetrics,
    /// Present while this VM is the reporter.
    scheduler: Option<Scheduler>,
    in_flight: Option<InFlight>,
    delivery: DeliveryLog,
}

impl SurgeRoot {
    pub(crate) fn new() -> Self {
        let vm_id = host::random_u64();
        Self {
            vm: Rc::new(RefCell::new(VmState {
                vm_id,
                ..VmState::default()
            })),
            vm_id,
            proxy: None,
            metrics: OwnMetrics::default(),
            scheduler: None,
            in_flight: None,
            delivery: DeliveryLog::default(),
        }
    }

    fn config(&self) -> Option<Rc<Config>> {
        self.vm.borrow().config.clone()
    }

    /// Claims or renews the lease; true when this VM is the reporter.
    fn hold_lease(&self, now_ms: u64, ttl_ms: u64) -> bool {
        let (stored, cas) = host::shared_get(LEASE_KEY);
        let current = stored.as_deref().and_then(Lease::decode);
        match surge_filter_core::lease::lease_step(current, self.vm_id, now_ms, ttl_ms) {
            LeaseStep::Follow => false,
            LeaseStep::Claim(lease) => host::shared_set(LEASE_KEY, &lease.encode(), cas),
        }
    }

    fn report(&mut self, config: &Config, now_ms: u64) {
        let readings = {
            let mut vm = self.vm.borrow_mut();
            let inflight = vm.routes.census(now_ms);
            vm.routes.read_all(&inflight)
        };
        let Some(scheduler) = self.scheduler.as_mut() else {
            return;
        };
        scheduler.observe(now_ms, report::arrivals(&readings));

        if let Some(in_flight) = self.in_flight {
            // Envoy always answers a call (a timeout is a 504), so this bound only guards
            // against a lost callback.
            if now_ms.saturating_sub(in_flight.since_ms) < config.timeout_ms + 1000 {
                host::add(self.metrics.skipped_in_flight, 1);
                return;
            }
            self.in_flight = None;
        }

        let (stored, cas) = host::shared_get(SEQ_KEY);
        let record = SeqRecord::decode(&stored.unwrap_or_default());
        let Some(trigger) = scheduler.due(now_ms, record.schedule_ms) else {
            return;
        };
        let next = record.next(scheduler.next_schedule(now_ms, record.schedule_ms, trigger));
        if !host::shared_set(SEQ_KEY, &next.encode(), cas) {
            // Another VM reported in between (a lease hand-over): try again next tick.
            return;
        }
        scheduler.sent(now_ms, trigger);
        let recent = scheduler.recent();

        let instance = host::shared_get(INSTANCE_KEY)
            .0
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default();
        let Some(proxy) = self.proxy.clone() else {
            return;
        };
        let surge = trigger.is_surge();
        let body = report::encode(&report::build(
            Header {
                proxy,
                instance,
                seq: next.seq,
                time_ms: now_ms,
                surge,
            },
            readings,
            recent.as_ref(),
        ));
        let bearer = config.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut headers = vec![
            (":method", "POST"),
            (":path", config.path.as_str()),
            (":authority", config.authority.as_str()),
            ("content-type", surge_wire::CONTENT_TYPE),
        ];
        if let Some(bearer) = &bearer {
            headers.push(("authorization", bearer.as_str()));
        }
        host::add(self.metrics.sent, 1);
        if surge {
            host::add(self.metrics.surge, 1);
        }
        match host::dispatch(&config.cluster, headers, &body, config.timeout_ms) {
            Ok(token) => {
                self.in_flight = Some(InFlight {
                    token,
                    since_ms: now_ms,
                })
            }
            Err(_) => self.finish(Outcome::DispatchFailed, &config.cluster),
        }
    }

    fn finish(&mut self, outcome: Outcome, cluster: &str) {
        self.metrics.outcome(outcome);
        if let Some(line) = self.delivery.record(outcome, cluster) {
            let level = if outcome == Outcome::Delivered {
                LogLevel::Info
            } else {
                LogLevel::Warn
            };
            host::log(level, &line);
        }
    }
}

impl Context for SurgeRoot {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        _body_size: usize,
        _num_trailers: usize,
    ) {
        if self.in_flight.is_some_and(|f| f.token == token_id) {
            self.in_flight = None;
        }
        let status = host::call_response_status();
        let outcome = Outcome::from_response(num_headers, status.as_deref());
        let cluster = self.config().map(|c| c.cluster.clone()).unwrap_or_default();
        self.finish(outcome, &cluster);
    }
}

impl RootContext for SurgeRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let config = match Config::parse(&host::plugin_configuration()) {
            Ok(config) => config,
            Err(e) => {
                host::log(LogLevel::Error, &format!("{e}"));
                return false;
            }
        };
        let lookup = |key: &str| {
            identity::metadata_paths(key)
                .into_iter()
                .find_map(|path| host::property(path).filter(|v| !v.is_empty()))
        };
        let (proxy, missing) = identity::proxy(lookup, config.role);
        if !missing.is_empty() {
            host::log(
                LogLevel::Warn,
                &format!(
                    "node metadata lacks {}; reports say \"{}\" instead",
                    missing.join(", "),
                    identity::UNKNOWN
                ),
            );
        }
        self.proxy = Some(proxy);
        self.metrics = OwnMetrics::define();
        host::shared_init(ROUTES_KEY, b"");
        // Define every known route metric now, with the epoch gauge, so that they share one
        // lifetime: if the gauge survived from a live VM, so did the counters.
        self.vm.borrow_mut().routes.define_known();
        let epoch = host::gauge(STATS_EPOCH_METRIC);
        let instance = surge_filter_core::lease::instance_id(host::random_u64());
        if surge_filter_core::lease::stats_are_fresh(host::read(epoch)) {
            host::shared_set(INSTANCE_KEY, instance.as_bytes(), None);
            host::add(epoch, 1);
        } else {
            host::shared_init(INSTANCE_KEY, instance.as_bytes());
        }
        let _ = hostcalls::set_tick_period(Duration::from_millis(config.surge.check_period_ms));
        self.scheduler = None;
        self.vm.borrow_mut().config = Some(Rc::new(config));
        true
    }

    fn on_tick(&mut self) {
        let Some(config) = self.config() else {
            return;
        };
        // Every VM, reporter or not, hands its tallied counts to the process-wide metrics, and
        // publishes its in-flight counts (also unchanged: the time it writes says it is alive).
        let now_ms = host::now_ms();
        {
            let mut vm = self.vm.borrow_mut();
            let _ = vm.routes.flush();
            let id = vm.vm_id;
            vm.routes.publish(id, now_ms);
        }
        if !self.hold_lease(now_ms, config.lease_ms()) {
            // A follower keeps no history: when it takes over it starts afresh, and the shared
            // sequence record keeps the schedule.
            self.scheduler = None;
            return;
        }
        if self.scheduler.is_none() {
            self.scheduler = Some(Scheduler::new(&config));
        }
        self.report(&config, now_ms);
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(SurgeHttp::new(self.vm.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
