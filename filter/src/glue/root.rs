//! Per-VM root context: configuration, the reporter election, the reports, and the held
//! requests' releases.
//!
//! Every VM ticks every check period; the one holding the lease reads the process-wide counters,
//! asks the scheduler whether a report is due and sends it. Followers only renew nothing and
//! wait: the lease expires if the reporter stops ticking, and the next VM to tick takes over.
//! The reporter stores the cold set each answer gives; every VM of a holding role reads it on
//! its tick and resumes (or ends) its own held requests.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};
use surge_wire::Proxy;

use surge_filter_core::config::{Config, ProxyRole};
use surge_filter_core::hold::{self as hold_rules, ColdSet, wake_queue};
use surge_filter_core::identity;
use surge_filter_core::lease::{
    INSTANCE_KEY, LEASE_KEY, Lease, LeaseStep, ROUTES_KEY, SEQ_KEY, STATS_EPOCH_METRIC, SeqRecord,
};
use surge_filter_core::report::{self, DeliveryLog, Header, Outcome};
use surge_filter_core::surge::Scheduler;
use surge_filter_core::tally::FlushClock;

use super::hold::{self, HoldMetrics, VmHold};
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
    /// Requests held for cold destinations (gateway and client roles).
    pub(crate) hold: VmHold,
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
    /// Holding reports sent on an answer's arrival rather than at a check.
    followed: Option<u32>,
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
            followed: host::counter("surge.reports_followed_total"),
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
    /// The root's context id, made effective again after acting on held requests' contexts.
    context_id: u32,
    vm: Rc<RefCell<VmState>>,
    vm_id: u64,
    proxy: Option<Proxy>,
    metrics: OwnMetrics,
    /// Present while this VM is the reporter.
    scheduler: Option<Scheduler>,
    in_flight: Option<InFlight>,
    delivery: DeliveryLog,
    /// Whether the last answer could be read (`None` before the first), so a malformed answer
    /// is logged once per change, not once per report.
    answer_readable: Option<bool>,
    /// This VM's wake-up queue (`hold::wake_queue`), once registered.
    wake_queue: Option<u32>,
    /// A client plugin on a gateway: it neither holds nor reports (the gateway's plugin does).
    standing_aside: bool,
    /// Whether the timer runs at the head start's pace (held requests wait for their turn)
    /// rather than every check period.
    quick_ticks: bool,
    /// When the next check is due: ticks before it, at the head start's pace, only release.
    next_check_ms: u64,
}

impl SurgeRoot {
    pub(crate) fn new(context_id: u32) -> Self {
        let vm_id = host::random_u64();
        Self {
            context_id,
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
            answer_readable: None,
            wake_queue: None,
            standing_aside: false,
            quick_ticks: false,
            next_check_ms: 0,
        }
    }

    /// Releases (or ends) this VM's held requests as the cold set now allows, then sets the
    /// timer to the head start's pace while some wait for their turn behind a head
    /// (`hold::HEAD_START_MS`), and back to the check period after. Only the release runs on
    /// the quick ticks: the reporter's schedule and the surge window keep their samples a
    /// check period apart.
    fn release_held(&mut self, config: &Config, now_ms: u64) {
        let quick = {
            let mut vm = self.vm.borrow_mut();
            let id = vm.vm_id;
            vm.hold.tick(id, self.context_id, config, now_ms);
            vm.hold.next_release_ms().is_some()
        };
        if quick == self.quick_ticks {
            return;
        }
        self.quick_ticks = quick;
        let period = if quick {
            hold_rules::HEAD_START_MS.min(config.surge.check_period_ms)
        } else {
            config.surge.check_period_ms
        };
        let _ = hostcalls::set_tick_period(Duration::from_millis(period));
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

    /// Whether this VM holds a live reporter lease (read only: the tick renews it).
    fn is_reporter(&self, now_ms: u64) -> bool {
        host::shared_get(LEASE_KEY)
            .0
            .as_deref()
            .and_then(Lease::decode)
            .is_some_and(|l| l.holder == self.vm_id && l.expires_ms > now_ms)
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

        let held = self.vm.borrow().hold.held_now(now_ms);
        let held_metric = self.vm.borrow().hold.metrics.held_now;
        host::set(
            held_metric,
            held.iter().fold(0, |n, h| n.saturating_add(h.requests)),
        );
        let (stored, cas) = host::shared_get(SEQ_KEY);
        let record = SeqRecord::decode(&stored.unwrap_or_default());
        let Some(trigger) = scheduler.due_holding(now_ms, record.schedule_ms, !held.is_empty())
        else {
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
        let totals = self.vm.borrow().hold.metrics.totals();
        let (held, hold_totals) = report::hold_fields(held, totals);
        let body = report::encode_body(&surge_wire::ReportBody {
            report: report::build(
                Header {
                    proxy,
                    instance,
                    seq: next.seq,
                    time_ms: now_ms,
                    surge,
                },
                readings,
                recent.as_ref(),
            ),
            held,
            hold_totals,
        });
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

    /// Reads a delivered report's answer and stores the cold set it gives (when it changes
    /// anything); a malformed answer changes nothing and is counted.
    fn answer(&mut self, body_size: usize) {
        let limits = surge_wire::Limits::default();
        let body = if body_size == 0 {
            Some(Vec::new())
        } else {
            host::call_response_body(body_size, limits.max_answer_bytes)
        };
        let parsed = match body {
            Some(body) => hold_rules::parse_answer(&body, &limits),
            None => Err(hold_rules::AnswerError::TooLarge {
                len: body_size,
                max: limits.max_answer_bytes,
            }),
        };
        let metrics = self.vm.borrow().hold.metrics;
        let readable = parsed.is_ok();
        if self.answer_readable.replace(readable) != Some(readable) {
            match &parsed {
                Err(e) => host::log(
                    LogLevel::Warn,
                    &format!("{e}; the cold destinations stay as they were"),
                ),
                Ok(_) if self.answer_readable.is_some() => {
                    host::log(LogLevel::Info, "the scaler's answers are readable again")
                }
                Ok(_) => {}
            }
        }
        let now_ms = host::now_ms();
        match parsed {
            Ok(answer) => {
                host::set(metrics.cold_now, answer.cold.len() as u64);
                let set = ColdSet::new(now_ms, answer);
                if hold::store_cold(&set)
                    && let Some(config) = self.config()
                {
                    // This VM takes the change up now, and wakes the others that hold requests,
                    // rather than leave it to their next ticks.
                    self.release_held(&config, now_ms);
                    self.vm.borrow().hold.wake_holders(self.vm_id);
                }
            }
            Err(_) => host::add(metrics.answers_malformed, 1),
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
        body_size: usize,
        _num_trailers: usize,
    ) {
        let sent_ms = self
            .in_flight
            .filter(|f| f.token == token_id)
            .map(|f| f.since_ms);
        if sent_ms.is_some() {
            self.in_flight = None;
        }
        let status = host::call_response_status();
        let outcome = Outcome::from_response(num_headers, status.as_deref());
        let cluster = self.config().map(|c| c.cluster.clone()).unwrap_or_default();
        self.finish(outcome, &cluster);
        // Only a delivered report's answer says anything; no answer changes nothing.
        if outcome != Outcome::Delivered {
            return;
        }
        self.answer(body_size);
        // Still holding after an answer the scaler kept: the next holding report goes now, so
        // that an answer is always waiting for the destination to turn warm.
        let (Some(sent_ms), Some(config)) = (sent_ms, self.config()) else {
            return;
        };
        let now_ms = host::now_ms();
        let holding = !self.vm.borrow().hold.held_now(now_ms).is_empty();
        let follows = self
            .scheduler
            .as_ref()
            .is_some_and(|s| s.follows_answer(sent_ms, now_ms, holding));
        if follows && self.is_reporter(now_ms) {
            host::add(self.metrics.followed, 1);
            self.report(&config, now_ms);
        }
    }

    fn on_done(&mut self) -> bool {
        // The plugin is being shut down (a config push, once the old filter chain drained): the
        // requests this VM still holds are answered now rather than left to Envoy.
        if let Some(config) = self.config() {
            let now_ms = host::now_ms();
            let mut vm = self.vm.borrow_mut();
            let id = vm.vm_id;
            vm.hold.shut_down(id, self.context_id, &config, now_ms);
        }
        true
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
        let (proxy, missing) = identity::proxy(lookup, config.role.wire());
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
        self.standing_aside = config.role == ProxyRole::Client
            && identity::NODE_ID_PATHS
                .iter()
                .find_map(|path| host::property(path.to_vec()))
                .is_some_and(|id| identity::is_gateway_node(&id));
        if self.standing_aside {
            host::log(
                LogLevel::Info,
                "role client on a gateway (node router~...): this plugin stands aside; the \
                 gateway's own plugin holds and reports",
            );
        }
        self.metrics = OwnMetrics::define();
        // Istio leaves the VM id empty; the wake-up queues are named within it.
        let vm_config_id = host::property(vec!["plugin_vm_id"])
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default();
        self.vm.borrow_mut().hold.configure(
            config.role.holds() && !self.standing_aside,
            HoldMetrics::define(),
            vm_config_id,
        );
        if self.wake_queue.is_none() {
            self.wake_queue = host::register_queue(&wake_queue(self.vm_id));
        }
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
        // A plugin standing aside never ticks (a period of 0 turns the timer off).
        let period = if self.standing_aside {
            0
        } else {
            config.surge.check_period_ms
        };
        let _ = hostcalls::set_tick_period(Duration::from_millis(period));
        self.quick_ticks = false;
        self.scheduler = None;
        self.vm.borrow_mut().config = Some(Rc::new(config));
        true
    }

    fn on_tick(&mut self) {
        let Some(config) = self.config().filter(|_| !self.standing_aside) else {
            return;
        };
        let now_ms = host::now_ms();
        if self.quick_ticks && now_ms < self.next_check_ms {
            // A tick of the head start's pace: the held requests' turn, nothing else.
            self.release_held(&config, now_ms);
            return;
        }
        self.next_check_ms = now_ms.saturating_add(config.surge.check_period_ms);
        // Every VM, reporter or not, hands its tallied counts to the process-wide metrics, and
        // publishes its in-flight counts (also unchanged: the time it writes says it is alive).
        if config.role.counts() {
            let mut vm = self.vm.borrow_mut();
            let _ = vm.routes.flush();
            vm.routes.publish(self.vm_id, now_ms);
        }
        self.release_held(&config, now_ms);
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

    fn on_queue_ready(&mut self, queue_id: u32) {
        // Woken by another VM: a first held request (this VM reports: the activation report goes
        // out now), or a change of the cold set (this VM holds requests: release them now).
        host::drain_queue(queue_id);
        let Some(config) = self.config().filter(|_| !self.standing_aside) else {
            return;
        };
        let now_ms = host::now_ms();
        self.release_held(&config, now_ms);
        if self.scheduler.is_some() && self.is_reporter(now_ms) {
            self.report(&config, now_ms);
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let counts = self.config().is_none_or(|c| c.role.counts());
        Some(Box::new(SurgeHttp::new(
            self.vm.clone(),
            context_id,
            counts,
        )))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
