//! A decoder for the common shape of a report body, which the ingest handler tries before
//! serde_json.
//!
//! Decoding is most of the scaler's own work per report (serde_json's generic machinery checks
//! every key and string as UTF-8, and matches field names through visitors). Real reports have
//! one shape: the filter's, with no escapes and integers only. This decoder reads exactly that
//! and answers `None` for anything else (an escape, a float, a duplicate or unknown field, a
//! `null`, malformed JSON); the handler then runs serde_json, which decides and names the field
//! of any error. So the fast path can only be right or decline: whenever it returns a report,
//! serde_json would have returned the same one (checked by `tests`, and by the fuzz check
//! `fuzz_checks::wire_report` over any bytes).

use surge_wire::{Proxy, Report, Role, RouteCounters};

/// The report in `bytes`, if it has the plain shape; `None` means "ask serde_json".
pub fn decode_plain(bytes: &[u8]) -> Option<Report> {
    // One UTF-8 check for the whole body; strings below are then slices of it.
    let text = std::str::from_utf8(bytes).ok()?;
    let mut reader = Reader { text, bytes, at: 0 };
    let report = reader.report()?;
    reader.whitespace();
    (reader.at == bytes.len()).then_some(report)
}

struct Reader<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
}

/// Which fields an object has had so far (a repeat or a missing one declines).
#[derive(Default)]
struct Seen(u16);

impl Seen {
    fn first(&mut self, bit: u16) -> Option<()> {
        if self.0 & bit != 0 {
            return None;
        }
        self.0 |= bit;
        Some(())
    }

    fn has(&self, bits: u16) -> bool {
        self.0 & bits == bits
    }
}

impl<'a> Reader<'a> {
    fn whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        self.whitespace();
        (self.bytes.get(self.at) == Some(&byte)).then(|| self.at += 1)
    }

    /// After a member or an element: `true` for a comma, `false` for the closing `close`.
    fn next(&mut self, close: u8) -> Option<bool> {
        self.whitespace();
        match self.bytes.get(self.at)? {
            b',' => {
                self.at += 1;
                Some(true)
            }
            &b if b == close => {
                self.at += 1;
                Some(false)
            }
            _ => None,
        }
    }

    /// A string without escapes or control characters, as a slice of the body.
    fn str(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let start = self.at;
        loop {
            match *self.bytes.get(self.at)? {
                b'"' => break,
                b'\\' | 0..=0x1f => return None,
                _ => self.at += 1,
            }
        }
        let value = self.text.get(start..self.at)?;
        self.at += 1;
        Some(value)
    }

    /// A non-negative integer as JSON writes it (no sign, fraction, exponent or leading zero).
    fn u64(&mut self) -> Option<u64> {
        self.whitespace();
        let start = self.at;
        let mut value: u64 = 0;
        while let Some(&digit @ b'0'..=b'9') = self.bytes.get(self.at) {
            value = value
                .checked_mul(10)?
                .checked_add(u64::from(digit - b'0'))?;
            self.at += 1;
        }
        let digits = self.at - start;
        let leading_zero = digits > 1 && self.bytes.get(start) == Some(&b'0');
        let continues = matches!(self.bytes.get(self.at), Some(b'.' | b'e' | b'E'));
        (digits > 0 && !leading_zero && !continues).then_some(value)
    }

    fn bool(&mut self) -> Option<bool> {
        self.whitespace();
        let rest = self.bytes.get(self.at..)?;
        if rest.starts_with(b"true") {
            self.at += 4;
            Some(true)
        } else if rest.starts_with(b"false") {
            self.at += 5;
            Some(false)
        } else {
            None
        }
    }

    /// Walks an object's members, calling `member` with each key; declines an empty key list
    /// only through `member`'s own checks.
    fn object(&mut self, mut member: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        self.expect(b'{')?;
        self.whitespace();
        if self.bytes.get(self.at) == Some(&b'}') {
            self.at += 1;
            return Some(());
        }
        loop {
            let key = self.str()?;
            self.expect(b':')?;
            member(self, key)?;
            if !self.next(b'}')? {
                return Some(());
            }
        }
    }

    fn report(&mut self) -> Option<Report> {
        const VERSION: u16 = 1;
        const PROXY: u16 = 2;
        const INSTANCE: u16 = 4;
        const SEQ: u16 = 8;
        const TIME: u16 = 16;
        const SURGE: u16 = 32;
        const ROUTES: u16 = 64;
        const WINDOW: u16 = 128;
        let mut seen = Seen::default();
        let (mut version, mut proxy, mut instance) = (0, None, None);
        let (mut seq, mut time_ms, mut surge) = (0, 0, false);
        let (mut routes, mut window_ms) = (Vec::new(), None);
        self.object(|r, key| {
            match key {
                "version" => {
                    seen.first(VERSION)?;
                    version = u32::try_from(r.u64()?).ok()?;
                }
                "proxy" => {
                    seen.first(PROXY)?;
                    proxy = Some(r.proxy()?);
                }
                "instance" => {
                    seen.first(INSTANCE)?;
                    instance = Some(r.str()?.to_owned());
                }
                "seq" => {
                    seen.first(SEQ)?;
                    seq = r.u64()?;
                }
                "time_ms" => {
                    seen.first(TIME)?;
                    time_ms = r.u64()?;
                }
                "surge" => {
                    seen.first(SURGE)?;
                    surge = r.bool()?;
                }
                "routes" => {
                    seen.first(ROUTES)?;
                    routes = r.routes()?;
                }
                "window_ms" => {
                    seen.first(WINDOW)?;
                    window_ms = Some(r.u64()?);
                }
                _ => return None,
            }
            Some(())
        })?;
        if !seen.has(VERSION | PROXY | INSTANCE | SEQ | TIME | SURGE | ROUTES) {
            return None;
        }
        Some(Report {
            version,
            proxy: proxy?,
            instance: instance?,
            seq,
            time_ms,
            surge,
            routes,
            window_ms,
        })
    }

    fn proxy(&mut self) -> Option<Proxy> {
        const NAMESPACE: u16 = 1;
        const WORKLOAD: u16 = 2;
        const POD: u16 = 4;
        const OWNER: u16 = 8;
        const ROLE: u16 = 16;
        let mut seen = Seen::default();
        let (mut namespace, mut workload, mut pod) = ("", "", "");
        let (mut owner, mut role) = ("", Role::Sidecar);
        self.object(|r, key| {
            match key {
                "namespace" => {
                    seen.first(NAMESPACE)?;
                    namespace = r.str()?;
                }
                "workload" => {
                    seen.first(WORKLOAD)?;
                    workload = r.str()?;
                }
                "pod" => {
                    seen.first(POD)?;
                    pod = r.str()?;
                }
                "owner" => {
                    seen.first(OWNER)?;
                    owner = r.str()?;
                }
                "role" => {
                    seen.first(ROLE)?;
                    role = match r.str()? {
                        "sidecar" => Role::Sidecar,
                        "gateway" => Role::Gateway,
                        "waypoint" => Role::Waypoint,
                        _ => return None,
                    };
                }
                _ => return None,
            }
            Some(())
        })?;
        // `owner` may be absent (it defaults to empty); the others may not.
        seen.has(NAMESPACE | WORKLOAD | POD | ROLE).then(|| Proxy {
            namespace: namespace.to_owned(),
            workload: workload.to_owned(),
            pod: pod.to_owned(),
            owner: owner.to_owned(),
            role,
        })
    }

    fn routes(&mut self) -> Option<Vec<RouteCounters>> {
        self.expect(b'[')?;
        let mut routes = Vec::new();
        self.whitespace();
        if self.bytes.get(self.at) == Some(&b']') {
            self.at += 1;
            return Some(routes);
        }
        loop {
            routes.push(self.route()?);
            if !self.next(b']')? {
                return Some(routes);
            }
        }
    }

    fn route(&mut self) -> Option<RouteCounters> {
        const ROUTE: u16 = 1;
        const CLUSTER: u16 = 2;
        const REQUESTS: u16 = 4;
        const ERRORS: u16 = 8;
        const DURATION: u16 = 16;
        const INFLIGHT: u16 = 32;
        const WINDOW: u16 = 64;
        let mut seen = Seen::default();
        let (mut route, mut cluster) = ("", "");
        let (mut requests, mut errors, mut duration, mut inflight) = (0, 0, 0, 0);
        let mut window = None;
        self.object(|r, key| {
            match key {
                "route" => {
                    seen.first(ROUTE)?;
                    route = r.str()?;
                }
                "cluster" => {
                    seen.first(CLUSTER)?;
                    cluster = r.str()?;
                }
                "requests_total" => {
                    seen.first(REQUESTS)?;
                    requests = r.u64()?;
                }
                "errors_total" => {
                    seen.first(ERRORS)?;
                    errors = r.u64()?;
                }
                "duration_us_total" => {
                    seen.first(DURATION)?;
                    duration = r.u64()?;
                }
                "inflight" => {
                    seen.first(INFLIGHT)?;
                    inflight = r.u64()?;
                }
                "window_requests" => {
                    seen.first(WINDOW)?;
                    window = Some(r.u64()?);
                }
                _ => return None,
            }
            Some(())
        })?;
        seen.has(ROUTE | CLUSTER | REQUESTS | ERRORS | DURATION | INFLIGHT)
            .then(|| RouteCounters {
                route: route.to_owned(),
                cluster: cluster.to_owned(),
                requests_total: requests,
                errors_total: errors,
                duration_us_total: duration,
                inflight,
                window_requests: window,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn serde(bytes: &[u8]) -> Option<Report> {
        serde_json::from_slice(bytes).ok()
    }

    const PLAIN: &str = r#"{"version":1,"proxy":{"namespace":"web","workload":"api",
        "pod":"api-1","owner":"kubernetes://apis/apps/v1/namespaces/web/deployments/api",
        "role":"sidecar"},"instance":"i-1","seq":7,"time_ms":1790000000000,"surge":true,
        "routes":[{"route":"default","cluster":"","requests_total":10,"errors_total":1,
        "duration_us_total":500,"inflight":2,"window_requests":3},
        {"route":"r","cluster":"c","requests_total":0,"errors_total":0,"duration_us_total":0,
        "inflight":0}],"window_ms":200}"#;

    #[test]
    fn a_plain_report_decodes_as_serde_json_decodes_it() {
        let fast = decode_plain(PLAIN.as_bytes()).unwrap();
        assert_eq!(Some(fast), serde(PLAIN.as_bytes()));
    }

    #[test]
    fn anything_but_the_plain_shape_is_left_to_serde_json() {
        // Each is valid for serde_json or an error it must name: the fast path declines.
        let cases = [
            PLAIN.replace(r#""pod":"api-1""#, r#""pod":"api\u002d1""#),
            PLAIN.replace(r#""seq":7"#, r#""seq":7.0"#),
            PLAIN.replace(r#""seq":7"#, r#""seq":7e0"#),
            PLAIN.replace(r#""seq":7"#, r#""seq":-7"#),
            PLAIN.replace(r#""seq":7"#, r#""seq":07"#),
            PLAIN.replace(r#""seq":7"#, r#""seq":7,"seq":8"#),
            PLAIN.replace(r#""seq":7"#, r#""seq":7,"extra":1"#),
            PLAIN.replace(r#""seq":7,"#, ""),
            PLAIN.replace(r#","window_ms":200"#, r#","window_ms":null"#),
            PLAIN.replace(r#""role":"sidecar""#, r#""role":"mesh""#),
            PLAIN.replace(r#""version":1"#, r#""version":4294967296"#),
            PLAIN.replace(r#""surge":true"#, r#""surge":1"#),
            format!("{PLAIN} x"),
            format!("\u{feff}{PLAIN}"),
            PLAIN.replace(r#""seq":7"#, r#""seq":99999999999999999999"#),
            PLAIN.replace("\"i-1\"", "\"i\u{1}1\""),
        ];
        for case in &cases {
            assert_eq!(decode_plain(case.as_bytes()), None, "{case}");
        }
    }

    #[test]
    fn an_absent_owner_and_empty_routes_decode_like_serde_json() {
        let body = r#" { "version" : 1 , "proxy" : { "role" : "gateway" , "namespace" : "n" ,
            "workload" : "w" , "pod" : "p" } , "instance" : "é" , "seq" : 0 , "time_ms" : 0 ,
            "surge" : false , "routes" : [ ] } "#;
        let fast = decode_plain(body.as_bytes()).unwrap();
        assert_eq!(fast.proxy.owner, "");
        assert_eq!(Some(fast), serde(body.as_bytes()));
    }

    proptest! {
        /// Whatever the bytes, the fast path either declines or agrees with serde_json.
        #[test]
        fn the_fast_path_never_disagrees_with_serde_json(
            cut in 0usize..PLAIN.len(),
            byte in any::<u8>(),
            insert in any::<bool>(),
        ) {
            let mut bytes = PLAIN.as_bytes().to_vec();
            if insert {
                bytes.insert(cut, byte);
            } else {
                bytes[cut] = byte;
            }
            if let Some(fast) = decode_plain(&bytes) {
                prop_assert_eq!(Some(fast), serde(&bytes));
            }
        }
    }
}
