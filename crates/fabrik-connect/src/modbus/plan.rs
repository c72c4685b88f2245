//! Checks a raw [`ModbusConfig`] and turns it into validated [`DevicePlan`]s: points of a map
//! grouped per table into contiguous read requests (holes up to `max_gap` read through, at
//! most 125 registers or 2000 bits per request). Every problem is reported at once, each
//! naming its device and point. No I/O.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use super::ModbusError;
use super::config::{DataType, DeviceConfig, MapConfig, ModbusConfig, Order, PointConfig, Table};
use super::decode::Codec;

/// A validated device.
#[derive(Debug, Clone, PartialEq)]
pub struct DevicePlan {
    /// Device id.
    pub id: Arc<str>,
    /// `host:port`.
    pub address: String,
    /// Modbus unit id.
    pub unit_id: u8,
    /// Per-request (and per-connect) timeout.
    pub timeout: Duration,
    /// First reconnect delay.
    pub reconnect_min: Duration,
    /// Reconnect delay cap.
    pub reconnect_max: Duration,
    /// Maps, each with its own interval.
    pub maps: Vec<MapPlan>,
    /// The points operators may set, in configuration order.
    pub writable: Vec<WritablePoint>,
}

/// A point declared `writable`: where it lives, how a value becomes its registers or bit, and
/// the range a write may set.
#[derive(Debug, Clone, PartialEq)]
pub struct WritablePoint {
    /// Signal name.
    pub signal: Arc<str>,
    /// Holding or coil.
    pub table: Table,
    /// Address on the wire.
    pub address: u16,
    /// How values are encoded (and read back).
    pub codec: Codec,
    /// Lowest value a write may set, in engineering units (numbers only).
    pub min: Option<f64>,
    /// Highest value a write may set, in engineering units (numbers only).
    pub max: Option<f64>,
    /// Engineering unit.
    pub unit: Option<Arc<str>>,
}

/// The requests of one map.
#[derive(Debug, Clone, PartialEq)]
pub struct MapPlan {
    /// Poll period.
    pub interval: Duration,
    /// Requests, in table then address order.
    pub requests: Vec<ReadRequest>,
}

/// One Modbus read request and the points decoded from its answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadRequest {
    /// Table (function code).
    pub table: Table,
    /// First address.
    pub start: u16,
    /// Registers or bits to read (≤ 125 or ≤ 2000).
    pub count: u16,
    /// Points inside `start..start + count`.
    pub points: Vec<PlannedPoint>,
}

impl ReadRequest {
    /// `holding 10..14`, for logs and reasons.
    pub fn describe(&self) -> String {
        format!(
            "{} {}..{}",
            self.table,
            self.start,
            u32::from(self.start) + u32::from(self.count)
        )
    }
}

/// A point placed inside a request.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedPoint {
    /// Signal name.
    pub signal: Arc<str>,
    /// Address on the wire.
    pub address: u16,
    /// Position of its first register or bit within the request's answer.
    pub offset: u16,
    /// How to decode it.
    pub codec: Codec,
    /// Engineering unit.
    pub unit: Option<Arc<str>>,
}

/// Validates the whole configuration and plans every device; all problems in one error.
pub fn plan(config: &ModbusConfig) -> Result<Vec<DevicePlan>, ModbusError> {
    let mut issues = Vec::new();
    let mut ids = HashSet::new();
    let mut plans = Vec::new();
    for device in &config.devices {
        if !ids.insert(device.id.as_str()) {
            issues.push(format!("device `{}`: duplicate device id", device.id));
        }
        if let Some(plan) = plan_device(device, &mut issues) {
            plans.push(plan);
        }
    }
    if issues.is_empty() {
        Ok(plans)
    } else {
        Err(ModbusError::Config(issues))
    }
}

fn plan_device(device: &DeviceConfig, issues: &mut Vec<String>) -> Option<DevicePlan> {
    let before = issues.len();
    let id = device.id.as_str();
    let mut issue = |msg: String| issues.push(format!("device `{id}`: {msg}"));
    if id.trim().is_empty() {
        issue("`id` is empty".into());
    }
    match device.address.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {}
        _ => issue(format!(
            "`address` `{}` is not host:port with a port in 1..=65535",
            device.address
        )),
    }
    if device.timeout_ms == 0 {
        issue("`timeout_ms` must be > 0".into());
    }
    if device.reconnect_min_ms == 0 || device.reconnect_max_ms < device.reconnect_min_ms {
        issue(format!(
            "need 0 < reconnect_min_ms ({}) <= reconnect_max_ms ({})",
            device.reconnect_min_ms, device.reconnect_max_ms
        ));
    }
    if device.maps.is_empty() {
        issue("no `maps`: nothing to poll".into());
    }

    let mut signals = HashSet::new();
    let mut maps = Vec::new();
    let mut writable = Vec::new();
    for (index, map) in device.maps.iter().enumerate() {
        for point in &map.points {
            if !signals.insert(point.name.as_str()) {
                issues.push(format!(
                    "device `{id}`: point `{}`: duplicate signal name",
                    point.name
                ));
            }
        }
        maps.push(plan_map(id, index, map, &mut writable, issues));
    }

    check_writes_overlap(id, &maps, &writable, issues);
    (issues.len() == before).then(|| DevicePlan {
        id: Arc::from(id),
        address: device.address.clone(),
        unit_id: device.unit_id,
        timeout: Duration::from_millis(device.timeout_ms),
        reconnect_min: Duration::from_millis(device.reconnect_min_ms),
        reconnect_max: Duration::from_millis(device.reconnect_max_ms),
        maps,
        writable,
    })
}

fn plan_map(
    device: &str,
    index: usize,
    map: &MapConfig,
    writable: &mut Vec<WritablePoint>,
    issues: &mut Vec<String>,
) -> MapPlan {
    if map.poll_interval_ms == 0 {
        issues.push(format!(
            "device `{device}`: map {index}: `poll_interval_ms` must be > 0"
        ));
    }
    if map.points.is_empty() {
        issues.push(format!("device `{device}`: map {index}: no points"));
    }
    let mut by_table: BTreeMap<Table, Vec<PlannedPoint>> = BTreeMap::new();
    for point in &map.points {
        if let Some(codec) = check_point(device, point, issues) {
            if point.writable {
                writable.push(WritablePoint {
                    signal: Arc::from(point.name.as_str()),
                    table: point.table,
                    address: point.address,
                    codec: codec.clone(),
                    min: point.min,
                    max: point.max,
                    unit: point.unit.as_deref().map(Arc::from),
                });
            }
            by_table.entry(point.table).or_default().push(PlannedPoint {
                signal: Arc::from(point.name.as_str()),
                address: point.address,
                offset: 0,
                codec,
                unit: point.unit.as_deref().map(Arc::from),
            });
        }
    }
    let mut requests = Vec::new();
    for (table, mut points) in by_table {
        points.sort_by_key(|p| p.address);
        for pair in points.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            if end(a) > u32::from(b.address) {
                issues.push(format!(
                    "device `{device}`: point `{}`: {table} {}..{} overlaps point `{}` at {}",
                    b.signal,
                    b.address,
                    end(b),
                    a.signal,
                    a.address
                ));
            }
        }
        requests.extend(group(table, points, map.max_gap));
    }
    MapPlan {
        interval: Duration::from_millis(map.poll_interval_ms),
        requests,
    }
}

/// A writable point must not share a register or bit with a point of another map (overlaps
/// within a map are reported by [`plan_map`]): writing it would change that point too, which
/// nobody declared writable.
fn check_writes_overlap(
    device: &str,
    maps: &[MapPlan],
    writable: &[WritablePoint],
    issues: &mut Vec<String>,
) {
    let located: Vec<(usize, &PlannedPoint, Table)> = maps
        .iter()
        .enumerate()
        .flat_map(|(index, map)| {
            map.requests
                .iter()
                .flat_map(move |r| r.points.iter().map(move |p| (index, p, r.table)))
        })
        .collect();
    for w in writable {
        let Some(home) = located
            .iter()
            .find(|(_, p, _)| p.signal == w.signal)
            .map(|(index, _, _)| *index)
        else {
            continue;
        };
        let (start, stop) = (
            u32::from(w.address),
            u32::from(w.address) + u32::from(w.codec.len),
        );
        for (index, other, table) in &located {
            if *index != home
                && *table == w.table
                && u32::from(other.address) < stop
                && start < end(other)
            {
                issues.push(format!(
                    "device `{device}`: point `{}`: writable {} {start}..{stop} overlaps point \
                     `{}` of map {index} at {}; a write would change it too",
                    w.signal, w.table, other.signal, other.address
                ));
            }
        }
    }
}

/// One past the point's last register or bit.
fn end(point: &PlannedPoint) -> u32 {
    u32::from(point.address) + u32::from(point.codec.len)
}

/// Greedy grouping of address-sorted points: extend the current request while the hole before
/// the next point is at most `max_gap` and the request stays within the table's limit.
fn group(table: Table, points: Vec<PlannedPoint>, max_gap: u16) -> Vec<ReadRequest> {
    let limit = u32::from(table.max_per_request());
    let mut requests: Vec<ReadRequest> = Vec::new();
    for mut point in points {
        let start = u32::from(point.address);
        let merged = requests.last_mut().is_some_and(|req| {
            let req_start = u32::from(req.start);
            let req_end = req_start + u32::from(req.count);
            let fits = end(&point) - req_start <= limit;
            let close = start.saturating_sub(req_end) <= u32::from(max_gap);
            if fits && close {
                // Checked by `fits` (≤ 2000) and `start ≥ req_start` (points are sorted).
                point.offset = (start - req_start) as u16;
                req.count = req.count.max((end(&point) - req_start) as u16);
                req.points.push(point.clone());
            }
            fits && close
        });
        if !merged {
            point.offset = 0;
            requests.push(ReadRequest {
                table,
                start: point.address,
                count: point.codec.len,
                points: vec![point],
            });
        }
    }
    requests
}

/// Checks one point and builds its codec.
fn check_point(device: &str, p: &PointConfig, issues: &mut Vec<String>) -> Option<Codec> {
    let before = issues.len();
    let mut issue = |msg: String| {
        issues.push(format!("device `{device}`: point `{}`: {msg}", p.name));
    };
    if p.name.trim().is_empty() {
        issue("`name` is empty".into());
    }
    let t = p.data_type;
    if p.table.is_bits() {
        if t != DataType::Bool {
            issue(format!(
                "a {} point must have type `bool`, not `{t}`",
                p.table
            ));
        }
        if p.byte_order.is_some() || p.word_order.is_some() {
            issue(format!("{} points have no byte or word order", p.table));
        }
    }
    let len = match (t.fixed_registers(), p.length) {
        (_, _) if p.table.is_bits() => 1,
        (Some(n), None) => n,
        (Some(_), Some(_)) => {
            issue(format!("`length` is only for strings, not `{t}`"));
            1
        }
        (None, Some(n)) if n > 0 && n <= Table::Holding.max_per_request() => n,
        (None, Some(n)) => {
            issue(format!("string `length` {n} must be in 1..=125 registers"));
            1
        }
        (None, None) => {
            issue("a string needs `length` (registers)".into());
            1
        }
    };
    if u32::from(p.address) + u32::from(len) > 65_536 {
        issue(format!(
            "address {} + {len} runs past the end of the table (65535)",
            p.address
        ));
    }
    if !p.table.is_bits() {
        if p.word_order.is_some() && t.fixed_registers().is_none_or(|n| n == 1) {
            issue(format!("`word_order` has no meaning for a `{t}`"));
        }
        if t == DataType::Bool && p.byte_order.is_some() {
            issue("`byte_order` has no meaning for a `bool`".into());
        }
    }
    if !t.is_numeric() && (p.scale.is_some() || p.offset.is_some()) {
        issue(format!("`scale`/`offset` apply to numbers, not `{t}`"));
    }
    if p.scale.is_some_and(|s| !s.is_finite() || s == 0.0) {
        issue("`scale` must be finite and non-zero".into());
    }
    if p.offset.is_some_and(|o| !o.is_finite()) {
        issue("`offset` must be finite".into());
    }
    check_writable(p, &mut issue);
    (issues.len() == before).then(|| Codec {
        data_type: t,
        len,
        byte_order: p.byte_order.unwrap_or(Order::Big),
        word_order: p.word_order.unwrap_or(Order::Big),
        scale: p.scale,
        offset: p.offset,
    })
}

/// Registers one Write Multiple Registers request carries.
const MAX_WRITE_REGISTERS: u16 = 123;

/// The rules of a `writable` point: only the tables a master may write, a string no longer
/// than one write request carries, and a number only with the range an operator may set, so
/// a write can never reach a value nobody chose.
fn check_writable(p: &PointConfig, issue: &mut impl FnMut(String)) {
    let t = p.data_type;
    let limits = p.min.is_some() || p.max.is_some();
    if !p.writable {
        if limits {
            issue("`min`/`max` limit writes: set `writable = true` or remove them".into());
        }
        return;
    }
    if !matches!(p.table, Table::Holding | Table::Coil) {
        issue(format!(
            "{} points cannot be written: only holding registers and coils are writable",
            p.table
        ));
        return;
    }
    // Write Multiple Registers carries at most 123 registers (Modbus Application Protocol
    // 1.1b3, 6.12), two fewer than a read.
    if t == DataType::String
        && let Some(n) = p.length.filter(|&n| n > MAX_WRITE_REGISTERS)
    {
        issue(format!(
            "a writable `string` spans at most {MAX_WRITE_REGISTERS} registers (one write \
             request), not {n}"
        ));
    }
    if !t.is_numeric() {
        if limits {
            issue(format!("`min`/`max` apply to numbers, not `{t}`"));
        }
        return;
    }
    match (p.min, p.max) {
        (Some(min), Some(max)) if !min.is_finite() || !max.is_finite() => {
            issue("`min` and `max` must be finite".into());
        }
        (Some(min), Some(max)) if min > max => {
            issue(format!("`min` {min} is above `max` {max}"));
        }
        (Some(min), Some(max)) => {
            // A little slack: scaled bounds are computed in binary, a range a person wrote in
            // decimal.
            if let Some((lo, hi)) = engineering_range(p)
                && (min < lo - lo.abs().max(hi.abs()) * 1e-12
                    || max > hi + lo.abs().max(hi.abs()) * 1e-12)
            {
                issue(format!(
                    "`min`..`max` {min}..={max} reaches beyond what a `{t}` register holds \
                     here ({lo}..={hi}): writes there could never be made"
                ));
            }
        }
        _ => issue(
            "a writable number needs `min` and `max`: the range operators may set, in \
             engineering units"
                .into(),
        ),
    }
}

/// The values an integer point can hold, in engineering units (`None` for floats).
fn engineering_range(p: &PointConfig) -> Option<(f64, f64)> {
    if !matches!(
        p.data_type,
        DataType::U16 | DataType::I16 | DataType::U32 | DataType::I32
    ) {
        return None;
    }
    let (lo, hi) = super::write::integer_range(p.data_type);
    let scale = p.scale.unwrap_or(1.0);
    let offset = p.offset.unwrap_or(0.0);
    let (a, b) = (lo * scale + offset, hi * scale + offset);
    Some((a.min(b), a.max(b)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modbus::config::EXAMPLE_TOML;

    fn point(name: &str, table: Table, address: u16, t: DataType) -> PointConfig {
        PointConfig {
            name: name.into(),
            table,
            address,
            data_type: t,
            length: None,
            byte_order: None,
            word_order: None,
            scale: None,
            offset: None,
            unit: None,
            writable: false,
            min: None,
            max: None,
        }
    }

    fn device(points: Vec<PointConfig>, max_gap: u16) -> ModbusConfig {
        ModbusConfig {
            devices: vec![DeviceConfig {
                id: "pump-7".into(),
                measurement: "pump".into(),
                address: "127.0.0.1:502".into(),
                unit_id: 1,
                timeout_ms: 1000,
                reconnect_min_ms: 100,
                reconnect_max_ms: 1000,
                maps: vec![MapConfig {
                    poll_interval_ms: 100,
                    max_gap,
                    points,
                }],
            }],
        }
    }

    /// A request as (table, start, count, [(signal, offset)]).
    type Shape = (Table, u16, u16, Vec<(String, u16)>);

    fn requests(config: &ModbusConfig) -> Vec<Shape> {
        let plans = plan(config).expect("valid");
        plans[0].maps[0]
            .requests
            .iter()
            .map(|r| {
                let pts = r
                    .points
                    .iter()
                    .map(|p| (p.signal.to_string(), p.offset))
                    .collect();
                (r.table, r.start, r.count, pts)
            })
            .collect()
    }

    fn errors(config: &ModbusConfig) -> Vec<String> {
        match plan(config) {
            Err(ModbusError::Config(issues)) => issues,
            other => panic!("expected config errors, got {other:?}"),
        }
    }

    #[test]
    fn example_config_parses_and_plans() {
        let config: ModbusConfig = toml::from_str(EXAMPLE_TOML).expect("example parses");
        let plans = plan(&config).expect("example is valid");
        assert_eq!(plans.len(), 1);
        assert_eq!(plans[0].maps.len(), 2);
        // flow (holding 0..2) and serial (holding 100..108) are too far apart to merge.
        let tables: Vec<_> = plans[0].maps[0]
            .requests
            .iter()
            .map(|r| r.describe())
            .collect();
        assert_eq!(
            tables,
            [
                "holding 0..2",
                "holding 20..21",
                "holding 100..108",
                "input 10..11"
            ]
        );
        let writable: Vec<_> = plans[0]
            .writable
            .iter()
            .map(|p| (p.signal.to_string(), p.table, p.address, p.min, p.max))
            .collect();
        assert_eq!(
            writable,
            [
                (
                    "flow_setpoint".to_owned(),
                    Table::Holding,
                    20,
                    Some(0.0),
                    Some(120.0)
                ),
                ("running".to_owned(), Table::Coil, 0, None, None),
            ]
        );
    }

    #[test]
    fn writable_points_are_holding_registers_or_coils_with_a_range_for_numbers() {
        let writable = |name: &str, table, address, t| PointConfig {
            writable: true,
            ..point(name, table, address, t)
        };
        let input = writable("input", Table::Input, 0, DataType::U16);
        let discrete = writable("discrete", Table::Discrete, 0, DataType::Bool);
        let mut text = writable("text", Table::Holding, 10, DataType::String);
        text.length = Some(2);
        let mut long_text = writable("long_text", Table::Holding, 100, DataType::String);
        long_text.length = Some(124);
        let no_range = writable("no_range", Table::Holding, 20, DataType::F32);
        let mut upside_down = writable("upside_down", Table::Holding, 30, DataType::U16);
        (upside_down.min, upside_down.max) = (Some(10.0), Some(1.0));
        let mut infinite = writable("infinite", Table::Holding, 31, DataType::U16);
        (infinite.min, infinite.max) = (Some(0.0), Some(f64::INFINITY));
        let mut coil_range = writable("coil_range", Table::Coil, 1, DataType::Bool);
        coil_range.max = Some(1.0);
        let mut not_writable = point("limited", Table::Holding, 40, DataType::U16);
        not_writable.max = Some(5.0);
        let mut fine = writable("fine", Table::Holding, 50, DataType::U16);
        (fine.min, fine.max) = (Some(0.0), Some(100.0));
        let mut too_wide = writable("too_wide", Table::Holding, 60, DataType::U16);
        too_wide.scale = Some(0.1);
        (too_wide.min, too_wide.max) = (Some(0.0), Some(10_000.0));
        let errs = errors(&device(
            vec![
                input,
                discrete,
                text,
                long_text,
                no_range,
                upside_down,
                infinite,
                coil_range,
                not_writable,
                fine,
                too_wide,
            ],
            0,
        ));
        let expect = [
            "point `input`: input points cannot be written",
            "point `discrete`: discrete points cannot be written",
            "point `long_text`: a writable `string` spans at most 123 registers (one write request), not 124",
            "point `no_range`: a writable number needs `min` and `max`",
            "point `upside_down`: `min` 10 is above `max` 1",
            "point `infinite`: `min` and `max` must be finite",
            "point `coil_range`: `min`/`max` apply to numbers, not `bool`",
            "point `limited`: `min`/`max` limit writes: set `writable = true`",
            "point `too_wide`: `min`..`max` 0..=10000 reaches beyond what a `u16` register holds here (0..=6553.5",
        ];
        for e in expect {
            assert!(
                errs.iter().any(|m| m.contains(e)),
                "missing `{e}` in {errs:#?}"
            );
        }
        assert_eq!(errs.len(), expect.len(), "{errs:#?}");
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let text = EXAMPLE_TOML.replace("unit_id = 1", "unit_id = 1\nunitid = 2");
        let err = toml::from_str::<ModbusConfig>(&text).expect_err("unknown field");
        assert!(err.to_string().contains("unitid"), "{err}");
    }

    #[test]
    fn contiguous_and_small_gaps_merge_large_gaps_split() {
        let config = device(
            vec![
                point("c", Table::Holding, 20, DataType::U16),
                point("a", Table::Holding, 0, DataType::F32),
                point("b", Table::Holding, 2, DataType::U32),
                point("d", Table::Holding, 30, DataType::U16),
                point("x", Table::Input, 2, DataType::U16),
            ],
            8,
        );
        assert_eq!(
            requests(&config),
            vec![
                (Table::Holding, 0, 4, vec![("a".into(), 0), ("b".into(), 2)]),
                // hole 4..20 is 16 > 8: new request; 21..30 is 9 > 8: another.
                (Table::Holding, 20, 1, vec![("c".into(), 0)]),
                (Table::Holding, 30, 1, vec![("d".into(), 0)]),
                (Table::Input, 2, 1, vec![("x".into(), 0)]),
            ]
        );
        let merged = device(
            vec![
                point("a", Table::Holding, 0, DataType::U16),
                point("b", Table::Holding, 9, DataType::U16),
            ],
            8,
        );
        assert_eq!(
            requests(&merged),
            vec![(
                Table::Holding,
                0,
                10,
                vec![("a".into(), 0), ("b".into(), 9)]
            )]
        );
        let strict = device(
            vec![
                point("a", Table::Holding, 0, DataType::U16),
                point("b", Table::Holding, 2, DataType::U16),
            ],
            0,
        );
        assert_eq!(requests(&strict).len(), 2);
    }

    #[test]
    fn requests_respect_the_protocol_limits() {
        // 100 f32 points back to back = 200 registers: 62 fit in 124, the 63rd would make 126.
        let points = (0..100)
            .map(|i| point(&format!("p{i}"), Table::Input, i * 2, DataType::F32))
            .collect();
        let reqs = requests(&device(points, 8));
        let counts: Vec<u16> = reqs.iter().map(|r| r.2).collect();
        assert_eq!(counts, [124, 76]);
        assert_eq!(reqs[1].1, 124);

        let coils = (0..2500u16)
            .map(|i| point(&format!("c{i}"), Table::Coil, i, DataType::Bool))
            .collect();
        let counts: Vec<u16> = requests(&device(coils, 8)).iter().map(|r| r.2).collect();
        assert_eq!(counts, [2000, 500]);
    }

    #[test]
    fn overlaps_are_errors_naming_device_and_points() {
        let config = device(
            vec![
                point("flow", Table::Holding, 10, DataType::F32),
                point("level", Table::Holding, 11, DataType::U16),
                point("same-addr-other-table", Table::Input, 10, DataType::U16),
            ],
            8,
        );
        let errs = errors(&config);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].contains("device `pump-7`"), "{}", errs[0]);
        assert!(
            errs[0].contains("`level`") && errs[0].contains("`flow`"),
            "{}",
            errs[0]
        );
    }

    #[test]
    fn all_invalid_points_are_reported_at_once() {
        let mut string_no_len = point("s", Table::Holding, 100, DataType::String);
        string_no_len.word_order = Some(Order::Little);
        let mut coil_f32 = point("c", Table::Coil, 0, DataType::F32);
        coil_f32.byte_order = Some(Order::Little);
        let mut u16_word = point("w", Table::Holding, 0, DataType::U16);
        u16_word.word_order = Some(Order::Little);
        let mut bool_scaled = point("b", Table::Discrete, 0, DataType::Bool);
        bool_scaled.scale = Some(2.0);
        let mut long = point("long", Table::Holding, 200, DataType::String);
        long.length = Some(126);
        let mut zero_scale = point("z", Table::Input, 0, DataType::I16);
        zero_scale.scale = Some(0.0);
        let past_end = point("end", Table::Input, 65535, DataType::U32);
        let dup = point("w", Table::Input, 10, DataType::U16);
        let mut config = device(
            vec![
                string_no_len,
                coil_f32,
                u16_word,
                bool_scaled,
                long,
                zero_scale,
                past_end,
                dup,
            ],
            8,
        );
        config.devices[0].address = "no-port".into();
        config.devices[0].maps[0].poll_interval_ms = 0;
        let errs = errors(&config);
        let expect = [
            "`address` `no-port`",
            "`poll_interval_ms` must be > 0",
            "point `s`: a string needs `length`",
            "point `s`: `word_order` has no meaning",
            "point `c`: a coil point must have type `bool`",
            "point `c`: coil points have no byte or word order",
            "point `w`: `word_order` has no meaning for a `u16`",
            "point `b`: `scale`/`offset` apply to numbers",
            "point `long`: string `length` 126",
            "point `z`: `scale` must be finite and non-zero",
            "point `end`: address 65535 + 2 runs past",
            "point `w`: duplicate signal name",
        ];
        for e in expect {
            assert!(
                errs.iter().any(|m| m.contains(e)),
                "missing `{e}` in {errs:#?}"
            );
        }
        assert!(
            errs.iter().all(|m| m.starts_with("device `pump-7`")),
            "{errs:#?}"
        );
        assert_eq!(errs.len(), expect.len(), "{errs:#?}");
    }

    #[test]
    fn a_writable_point_may_not_share_registers_with_another_map() {
        let mut setpoint = point("setpoint", Table::Holding, 20, DataType::F32);
        setpoint.writable = true;
        (setpoint.min, setpoint.max) = (Some(0.0), Some(1.0));
        let mut config = device(vec![setpoint], 0);
        let mut other_map = config.devices[0].maps[0].clone();
        other_map.points = vec![
            point("status", Table::Holding, 21, DataType::U16),
            point("input_21", Table::Input, 21, DataType::U16),
        ];
        config.devices[0].maps.push(other_map);
        let errs = errors(&config);
        assert_eq!(
            errs,
            [
                "device `pump-7`: point `setpoint`: writable holding 20..22 overlaps point \
              `status` of map 1 at 21; a write would change it too"
            ]
        );
    }

    #[test]
    fn duplicate_devices_are_reported() {
        let mut config = device(vec![point("a", Table::Holding, 0, DataType::U16)], 8);
        config.devices.push(config.devices[0].clone());
        let errs = errors(&config);
        assert_eq!(errs, ["device `pump-7`: duplicate device id"]);
    }
}
